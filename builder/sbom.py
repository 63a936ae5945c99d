# SPDX-License-Identifier: Apache-2.0
"""An SPDX 2.3 JSON SBOM of an image, from the manifest its build wrote: the image as the
described package, containing every Debian/Ubuntu package (pkg:deb PURLs) and every
package of MLOS's Python environment (pkg:pypi PURLs)."""

from __future__ import annotations

import datetime
import os
import re
import uuid
from typing import Any
from urllib.parse import quote

from mlos_build import __version__

SPDX_VERSION = "SPDX-2.3"
NAMESPACE_ROOT = "https://mlos.invalid/spdx"  # unique, not resolvable: SPDX asks for a URI
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9.-]+")


def _purl_part(text: str) -> str:
    # PURL percent-encodes everything outside its unreserved set (':' in epochs, '+').
    return quote(text, safe=".-_~")


def deb_purl(vendor: str, name: str, version: str, arch: str | None, release: str) -> str:
    qualifiers = (f"arch={_purl_part(arch)}&" if arch else "") + f"distro={_purl_part(release)}"
    return f"pkg:deb/{vendor}/{_purl_part(name)}@{_purl_part(version)}?{qualifiers}"


def pypi_purl(name: str, version: str) -> str:
    # PyPI names in PURLs are lower case with '-' for runs of '-', '_' and '.' (PEP 503).
    normalized = re.sub(r"[-_.]+", "-", name).lower()
    return f"pkg:pypi/{_purl_part(normalized)}@{_purl_part(version)}"


def created_timestamp() -> str:
    """SOURCE_DATE_EPOCH when set (reproducible builds), else now; SPDX wants UTC, seconds."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc) if epoch
            else datetime.datetime.now(datetime.timezone.utc))
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


class _Ids:
    """SPDX element ids from names: only letters, digits, '.' and '-', each unique."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, kind: str, name: str) -> str:
        base = f"SPDXRef-{kind}-{_ID_UNSAFE.sub('-', name).strip('-') or 'x'}"
        candidate, n = base, 1
        while candidate in self.used:
            n += 1
            candidate = f"{base}-{n}"
        self.used.add(candidate)
        return candidate


def _package(spdx_id: str, name: str, version: str | None, purl: str,
             purpose: str, supplier: str | None = None) -> dict[str, Any]:
    package: dict[str, Any] = {
        "SPDXID": spdx_id,
        "name": name,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": False,
        "primaryPackagePurpose": purpose,
        "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                          "referenceLocator": purl}],
    }
    if version:
        package["versionInfo"] = version
    if supplier:
        package["supplier"] = supplier
    return package


def document(manifest: dict[str, Any], image_name: str, image_sha256: str) -> dict[str, Any]:
    """The SPDX document (a dict for json.dump) for one image."""
    ids = _Ids()
    distro = str(manifest.get("distribution") or "unknown")
    release = str(manifest.get("release") or "")
    image_id = ids("Image", image_name)
    image = {
        "SPDXID": image_id,
        "name": image_name,
        "versionInfo": str(manifest.get("mlos_build_version") or __version__),
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": False,
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "checksums": [{"algorithm": "SHA256", "checksumValue": image_sha256}],
        "comment": (f"MLOS {distro} {release} image, variant {manifest.get('variant')}, "
                    f"kernel {manifest.get('kernel_version')}"),
    }
    packages = [image]
    relationships = [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                      "relatedSpdxElement": image_id}]
    for pkg in manifest.get("packages") or []:
        spdx_id = ids("deb", pkg["name"])
        packages.append(_package(
            spdx_id, pkg["name"], pkg.get("version"),
            deb_purl(distro, pkg["name"], pkg.get("version", ""), pkg.get("architecture"),
                     f"{distro}-{release}"),
            "LIBRARY", supplier=f"Organization: {distro.capitalize()}"))
        relationships.append({"spdxElementId": image_id, "relationshipType": "CONTAINS",
                              "relatedSpdxElement": spdx_id})
    for pkg in manifest.get("python_packages") or []:
        spdx_id = ids("pypi", pkg["name"])
        packages.append(_package(spdx_id, pkg["name"], pkg.get("version"),
                                 pypi_purl(pkg["name"], pkg.get("version", "")), "LIBRARY"))
        relationships.append({"spdxElementId": image_id, "relationshipType": "CONTAINS",
                              "relatedSpdxElement": spdx_id})
    # The same image always gets the same namespace; another image, another one.
    namespace = uuid.uuid5(uuid.NAMESPACE_URL, f"{image_name}:{image_sha256}")
    return {
        "spdxVersion": SPDX_VERSION,
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": image_name,
        "documentNamespace": f"{NAMESPACE_ROOT}/{quote(image_name)}-{namespace}",
        "creationInfo": {"created": created_timestamp(),
                         "creators": [f"Tool: mlos-build-{__version__}"]},
        "packages": packages,
        "relationships": relationships,
    }
