"""Look up the AWS PyTorch deep-learning container (DLC) the worker image builds on.

The only place saeflow uses the ``sagemaker`` SDK: its ``image_uris.retrieve`` knows the
DLC registry account per region and the tag for a framework version, Python version and
processor. Run ``python -m infra.deploy.base_image --region eu-west-1`` to print the URI
(``build_and_push_worker.sh`` passes it to ``docker build --build-arg BASE_IMAGE=...``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

DEFAULT_FRAMEWORK_VERSION = "2.6"
DEFAULT_PY_VERSION = "py312"
# Any GPU instance type selects the CUDA image; the type itself does not change the URI.
DEFAULT_INSTANCE_TYPE = "ml.g5.xlarge"


def _retrieve() -> Any:
    """``image_uris.retrieve`` from the SDK: 3.x moved it to ``sagemaker.core``."""
    try:
        from sagemaker.core import image_uris  # sagemaker >= 3
    except ImportError:
        from sagemaker import image_uris  # sagemaker 2.x
    return image_uris.retrieve


def pytorch_base_image_uri(
    region: str,
    *,
    framework_version: str = DEFAULT_FRAMEWORK_VERSION,
    py_version: str = DEFAULT_PY_VERSION,
    instance_type: str = DEFAULT_INSTANCE_TYPE,
) -> str:
    """The ECR URI of the PyTorch training DLC for ``region`` (GPU build).

    The training image serves both jobs: it has CUDA torch and nothing that starts a
    server of its own, and the worker's ENTRYPOINT replaces the DLC's.
    """
    return _retrieve()(
        framework="pytorch",
        region=region,
        version=framework_version,
        py_version=py_version,
        instance_type=instance_type,
        image_scope="training",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--region", required=True, help="AWS region, e.g. us-east-1")
    parser.add_argument("--framework-version", default=DEFAULT_FRAMEWORK_VERSION)
    parser.add_argument("--py-version", default=DEFAULT_PY_VERSION)
    parser.add_argument("--instance-type", default=DEFAULT_INSTANCE_TYPE)
    args = parser.parse_args(argv)
    try:
        uri = pytorch_base_image_uri(
            args.region,
            framework_version=args.framework_version,
            py_version=args.py_version,
            instance_type=args.instance_type,
        )
    except ImportError:
        print(
            "MissingDependency: the sagemaker SDK is not installed (pip install sagemaker)",
            file=sys.stderr,
        )
        return 2
    except ValueError as exc:  # the SDK's way of saying "no such combination"
        print(f"InvalidBaseImage: {exc}", file=sys.stderr)
        return 2
    print(uri)
    return 0


if __name__ == "__main__":
    sys.exit(main())
