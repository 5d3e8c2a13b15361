#!/bin/bash
# Bakes what a Cloudhop node's start script (spawner/templates/user-data.yaml) would
# otherwise do at every launch into a machine image: Docker, NVIDIA's container toolkit
# configured for Docker (the GPU driver comes with the base image: each cloud's GPU
# image; see cloudhop.pkr.hcl), and the single-user image already pulled. It ends by
# writing /etc/cloudhop/prebaked, which tells the start script to skip the pull.
#
#   CLOUDHOP_IMAGE=<registry>/cloudhop/singleuser:<version> bash provision.sh
#
# Run as root on the builder VM (Packer's shell provisioner does).
set -euo pipefail
image="${CLOUDHOP_IMAGE:?set CLOUDHOP_IMAGE to the single-user image the hub runs}"

if ! command -v docker >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io curl gpg
  else
    dnf install -y -q docker || yum install -y -q docker
  fi
fi
systemctl enable --now docker

if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=driver_version --format=csv,noheader || echo "no GPU on the builder: driver kept as installed"
  if ! command -v nvidia-ctk >/dev/null 2>&1; then
    repo=https://nvidia.github.io/libnvidia-container
    if command -v apt-get >/dev/null 2>&1; then
      keyring=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg
      curl -fsSL "$repo/gpgkey" | gpg --dearmor --yes -o "$keyring"
      curl -fsSL "$repo/stable/deb/nvidia-container-toolkit.list" \
        | sed "s#deb https://#deb [signed-by=$keyring] https://#g" \
        > /etc/apt/sources.list.d/nvidia-container-toolkit.list
      apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nvidia-container-toolkit
    else
      curl -fsSL "$repo/stable/rpm/nvidia-container-toolkit.repo" -o /etc/yum.repos.d/nvidia-container-toolkit.repo
      dnf install -y -q nvidia-container-toolkit || yum install -y -q nvidia-container-toolkit
    fi
  fi
  nvidia-ctk runtime configure --runtime=docker
  systemctl restart docker
fi

docker pull "$image"
mkdir -p /etc/cloudhop
printf '%s\n' "$image" > /etc/cloudhop/prebaked
# no trace of the builder in the image: cloud-init runs again on each node
cloud-init clean --logs 2>/dev/null || true
