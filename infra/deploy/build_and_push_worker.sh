#!/usr/bin/env bash
# Build the saeflow GPU worker image on the AWS PyTorch DLC and push it to ECR.
#
#   infra/deploy/build_and_push_worker.sh [--region R] [--repository NAME] [--tag TAG]
#                                         [--base-image URI] [--no-push]
#
# Prints the pushed image URI on its last line (pass it to `sam deploy` as WorkerImageUri).
# Needs docker (BuildKit), the AWS CLI and credentials for the target account.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

region="${AWS_REGION:-${AWS_DEFAULT_REGION:-}}"
repository="saeflow-worker"
tag="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo latest)"
base_image=""
push=1

while [ $# -gt 0 ]; do
  case "$1" in
    --region) region="$2"; shift 2 ;;
    --repository) repository="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --base-image) base_image="$2"; shift 2 ;;
    --no-push) push=0; shift ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[ -n "$region" ] || { echo "no region: pass --region or set AWS_REGION" >&2; exit 2; }

if [ -z "$base_image" ]; then
  # Any Python with the sagemaker SDK: $PYTHON, the dev tools venv, the project venv, python3.
  python=""
  for candidate in ${PYTHON:-} "$root/.venv-tools/bin/python" "$root/.venv/bin/python" python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import sagemaker" 2>/dev/null; then
      python="$candidate"
      break
    fi
  done
  [ -n "$python" ] || { echo "no Python with the sagemaker SDK: pip install sagemaker, or pass --base-image URI" >&2; exit 2; }
  base_image="$(cd "$root" && "$python" -m infra.deploy.base_image --region "$region")"
fi
echo "base image: $base_image" >&2

account="$(aws sts get-caller-identity --query Account --output text)"
registry="$account.dkr.ecr.$region.amazonaws.com"
image="$registry/$repository:$tag"

# The DLC lives in an AWS-owned registry: log in to it to pull the base.
aws ecr get-login-password --region "$region" | docker login --username AWS --password-stdin "${base_image%%/*}"
DOCKER_BUILDKIT=1 docker build -f "$root/gpu_worker/Dockerfile" --build-arg "BASE_IMAGE=$base_image" -t "$image" "$root"

if [ "$push" = 1 ]; then
  aws ecr describe-repositories --region "$region" --repository-names "$repository" >/dev/null 2>&1 \
    || aws ecr create-repository --region "$region" --repository-name "$repository" \
         --image-scanning-configuration scanOnPush=true >/dev/null
  aws ecr get-login-password --region "$region" | docker login --username AWS --password-stdin "$registry"
  docker push "$image"
fi
echo "$image"
