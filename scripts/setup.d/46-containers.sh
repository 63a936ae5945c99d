# SPDX-License-Identifier: Apache-2.0
# mlos-build container: umoci sets the OCI image config mkosi 24.3 cannot write, skopeo
# writes the oci-archive (and inspects it in tests). podman loads and runs the image in
# the tests; runc, because crun cannot set the container's rlimits in some sandboxes
# (docs/container.md). mkosi compresses the OCI layer with pigz when it is there (all cores).
apt_install umoci skopeo podman runc uidmap slirp4netns containernetworking-plugins pigz
