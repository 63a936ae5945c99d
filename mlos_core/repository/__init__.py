# SPDX-License-Identifier: Apache-2.0
"""The model repository's Triton side: config.pbtxt (model_config.proto) read as Triton
reads it. The on-disk repository itself is mlos_core/registry.py."""
