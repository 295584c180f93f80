variable "ssh_public_key" {
  description = "OpenSSH public key allowed to log in as image_user (the key's text, not a path)."
  type        = string
}

variable "name" {
  description = "Name of the instance; the key pair, security group and volume are named after it."
  type        = string
  default     = "scitq"
}

variable "auth_url" {
  description = "Keystone endpoint of the OVHcloud Public Cloud (EU); the credentials come from the project's openrc (OS_* variables)."
  type        = string
  default     = "https://auth.cloud.ovh.net/v3/"
}

variable "region" {
  description = "OVHcloud Public Cloud region, e.g. GRA11, SBG5, BHS5, DE1, UK1, WAW1."
  type        = string
  default     = "GRA11"
}

variable "flavor" {
  description = "Instance flavor: the server needs little CPU; RAM serves PostgreSQL."
  type        = string
  default     = "b3-8"
}

variable "image" {
  description = "Image name; the setup script expects Debian (apt, systemd, PostgreSQL from Debian)."
  type        = string
  default     = "Debian 12"
}

variable "image_user" {
  description = "The image's login user (\"debian\" on OVHcloud's Debian images), for ssh_command."
  type        = string
  default     = "debian"
}

variable "network" {
  description = "Public network the instance is attached to."
  type        = string
  default     = "Ext-Net"
}

variable "ssh_cidrs" {
  description = "Networks allowed to reach SSH (port 22); narrow this to your own."
  type        = list(string)
  default     = ["0.0.0.0/0"]

  validation {
    condition     = alltrue([for cidr in var.ssh_cidrs : can(cidrhost(cidr, 0))])
    error_message = "Each entry of ssh_cidrs must be a CIDR block, e.g. 192.0.2.0/24."
  }
}

variable "scitq_cidrs" {
  description = "Networks allowed to reach the scitq API: your workstations and every worker."
  type        = list(string)
  default     = ["0.0.0.0/0"]

  validation {
    condition     = alltrue([for cidr in var.scitq_cidrs : can(cidrhost(cidr, 0))])
    error_message = "Each entry of scitq_cidrs must be a CIDR block, e.g. 192.0.2.0/24."
  }
}

variable "scitq_port" {
  description = "TCP port the scitq server listens on."
  type        = number
  default     = 5000

  validation {
    condition     = var.scitq_port > 0 && var.scitq_port < 65536 && var.scitq_port != 22
    error_message = "scitq_port must be a TCP port other than 22."
  }
}

variable "scitq_package" {
  description = "What pip installs: a name with optional version (scitq==1.2), a wheel URL or a VCS URL."
  type        = string
  default     = "scitq"

  validation {
    condition     = length(regexall("[\"'$`\\\\]", var.scitq_package)) == 0
    error_message = "scitq_package is written into a shell script: no quotes, $, backquote or backslash."
  }
}

variable "data_volume_gb" {
  description = "Size in GB of the block-storage volume holding task outputs and the PostgreSQL cluster."
  type        = number
  default     = 100
}

variable "data_volume_type" {
  description = "Block-storage volume type: classic, high-speed or high-speed-gen2."
  type        = string
  default     = "high-speed"
}
