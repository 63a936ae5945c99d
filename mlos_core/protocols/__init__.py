# SPDX-License-Identifier: Apache-2.0
"""Transports: REST (KServe v2, upstream MLOS), gRPC (KServe v2) and the optional routers
for backend capabilities. Each converts requests into mlos_core.dataplane types."""
