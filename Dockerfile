# The image deploy/kuberay/*.yaml name (my-registry/cns-ray:latest): Ray with CUDA, a CUDA build of torch, this project.
#
#   docker build -t my-registry/cns-ray:latest .       # CHANGE the registry; push it where the cluster pulls from
#
# The Ray version must match `rayVersion` in the KubeRay manifests and the one cluster.yaml installs.
ARG RAY_VERSION=2.60.0
FROM rayproject/ray:${RAY_VERSION}-py311-gpu

# torch first and alone, a CUDA build (CHANGE to the CUDA of your nodes); the project's torch range keeps it.
ARG TORCH_VERSION=2.5.1
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu124
RUN python -m pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

WORKDIR /home/ray/cns-ray
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users cns_ray ./cns_ray
COPY --chown=ray:users pipelines ./pipelines
COPY --chown=ray:users deploy ./deploy
ARG RAY_VERSION
RUN python -m pip install --no-cache-dir . "ray[serve,train]==${RAY_VERSION}"

# Base models come from S3 or the image, never from a model hub at run time.
ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
