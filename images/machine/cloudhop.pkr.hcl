# Prebaked Cloudhop node images, one build per cloud, all provisioned by provision.sh:
# Docker, NVIDIA's container toolkit, and the single-user image already pulled
# (docs/launch-time.md says what that saves). Build one cloud at a time:
#
#   packer init images/machine/cloudhop.pkr.hcl
#   packer build -only='amazon-ebs.cloudhop' \
#     -var image=<registry>/cloudhop/singleuser:<version> images/machine/cloudhop.pkr.hcl
#
# then point the hub at the result: c.AWSProvider.image_id (or the cloud's image setting,
# docs/clouds.md). Each source starts from its cloud's GPU image, which has the driver;
# the base images are variables because clouds rename them.
# Lambda Cloud has no custom images: its stock image has the driver, Docker and the
# toolkit already; only the pull remains (docs/launch-time.md).

packer {
  required_plugins {
    amazon       = { source = "github.com/hashicorp/amazon", version = ">= 1.3" }
    googlecompute = { source = "github.com/hashicorp/googlecompute", version = ">= 1.1" }
    azure        = { source = "github.com/hashicorp/azure", version = ">= 2.1" }
    oracle       = { source = "github.com/hashicorp/oracle", version = ">= 1.1" }
    digitalocean = { source = "github.com/digitalocean/digitalocean", version = ">= 1.4" }
  }
}

variable "image" {
  type        = string
  description = "The single-user image the hub runs (c.CloudProvider.singleuser_image)."
}
variable "name" {
  type    = string
  default = "cloudhop-node"
}

# -- AWS ---------------------------------------------------------------------------------
variable "aws_region" {
  type    = string
  default = "us-east-1"
}
variable "aws_base_ami_name" {
  type    = string
  default = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"
}
source "amazon-ebs" "cloudhop" {
  region        = var.aws_region
  instance_type = "g4dn.xlarge"
  ssh_username  = "ubuntu"
  ami_name      = "${var.name}-{{timestamp}}"
  source_ami_filter {
    filters     = { name = var.aws_base_ami_name, architecture = "x86_64" }
    owners      = ["amazon"]
    most_recent = true
  }
  launch_block_device_mappings {
    device_name           = "/dev/sda1"
    volume_size           = 100
    volume_type           = "gp3"
    delete_on_termination = true
  }
  tags = { "cloudhop-image" = var.image }
}

# -- GCP ---------------------------------------------------------------------------------
variable "gcp_project" {
  type    = string
  default = ""
}
variable "gcp_zone" {
  type    = string
  default = "us-central1-a"
}
variable "gcp_base_family" {
  type    = string
  default = "common-cu124-ubuntu-2204"
}
source "googlecompute" "cloudhop" {
  project_id              = var.gcp_project
  zone                    = var.gcp_zone
  machine_type            = "g2-standard-4"
  accelerator_type        = "projects/${var.gcp_project}/zones/${var.gcp_zone}/acceleratorTypes/nvidia-l4"
  accelerator_count       = 1
  on_host_maintenance     = "TERMINATE"
  source_image_family     = var.gcp_base_family
  source_image_project_id = ["deeplearning-platform-release"]
  metadata                = { "install-nvidia-driver" = "True" }
  disk_size               = 100
  ssh_username            = "packer"
  image_name              = "${var.name}-{{timestamp}}"
  image_family            = var.name
}

# -- Azure -------------------------------------------------------------------------------
variable "azure_subscription_id" {
  type    = string
  default = ""
}
variable "azure_resource_group" {
  type    = string
  default = "cloudhop-images"
}
variable "azure_location" {
  type    = string
  default = "eastus"
}
source "azure-arm" "cloudhop" {
  use_azure_cli_auth                = true
  subscription_id                   = var.azure_subscription_id
  managed_image_resource_group_name = var.azure_resource_group
  managed_image_name                = "${var.name}-{{timestamp}}"
  location                          = var.azure_location
  vm_size                           = "Standard_NC4as_T4_v3"
  os_type                           = "Linux"
  image_publisher                   = "microsoft-dsvm"
  image_offer                       = "ubuntu-hpc"
  image_sku                         = "2204"
}

# -- OCI ---------------------------------------------------------------------------------
variable "oci_compartment_ocid" {
  type    = string
  default = ""
}
variable "oci_subnet_ocid" {
  type    = string
  default = ""
}
variable "oci_availability_domain" {
  type    = string
  default = ""
}
variable "oci_base_image_ocid" {
  type        = string
  default     = ""
  description = "An Oracle Linux or Ubuntu GPU image of the region (with the NVIDIA driver)."
}
source "oracle-oci" "cloudhop" {
  compartment_ocid    = var.oci_compartment_ocid
  subnet_ocid         = var.oci_subnet_ocid
  availability_domain = var.oci_availability_domain
  base_image_ocid     = var.oci_base_image_ocid
  shape               = "VM.GPU.A10.1"
  image_name          = "${var.name}-{{timestamp}}"
  ssh_username        = "ubuntu"
}

# -- DigitalOcean ------------------------------------------------------------------------
variable "do_region" {
  type    = string
  default = "tor1"
}
variable "do_base_image" {
  type    = string
  default = "gpu-h100x1-base"
}
source "digitalocean" "cloudhop" {
  region        = var.do_region
  size          = "gpu-h100x1-80gb"
  image         = var.do_base_image
  ssh_username  = "root"
  snapshot_name = "${var.name}-{{timestamp}}"
}

build {
  sources = [
    "source.amazon-ebs.cloudhop",
    "source.googlecompute.cloudhop",
    "source.azure-arm.cloudhop",
    "source.oracle-oci.cloudhop",
    "source.digitalocean.cloudhop",
  ]
  provisioner "shell" {
    script           = "${path.root}/provision.sh"
    environment_vars = ["CLOUDHOP_IMAGE=${var.image}"]
    execute_command  = "chmod +x {{ .Path }}; sudo -E bash '{{ .Path }}'"
  }
}
