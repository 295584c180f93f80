variable "ssh_public_key" {
  description = "OpenSSH public key allowed to log in as admin_username (the key's text, not a path)."
  type        = string
}

variable "subscription_id" {
  description = "Azure subscription to deploy into; null takes ARM_SUBSCRIPTION_ID from the environment."
  type        = string
  default     = null
}

variable "name" {
  description = "Name of the VM; the resource group (<name>-rg) and the other resources are named after it. Lower case letters, digits and hyphens."
  type        = string
  default     = "scitq"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,40}$", var.name))
    error_message = "name must be 2 to 41 lower case letters, digits or hyphens, starting with a letter."
  }
}

variable "location" {
  description = "Azure region, e.g. westeurope, francecentral, northeurope."
  type        = string
  default     = "westeurope"
}

variable "vm_size" {
  description = "VM size: the server needs little CPU; RAM serves PostgreSQL. Must support Premium storage if data_disk_type is Premium_LRS."
  type        = string
  default     = "Standard_D2s_v5"
}

variable "admin_username" {
  description = "Administrator account created on the VM (SSH key only, no password)."
  type        = string
  default     = "azureuser"
}

variable "address_space" {
  description = "Address space of the virtual network."
  type        = string
  default     = "10.42.0.0/16"
}

variable "subnet_prefix" {
  description = "Address prefix of the server's subnet, inside address_space."
  type        = string
  default     = "10.42.1.0/24"
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

variable "os_disk_gb" {
  description = "Size in GB of the OS disk."
  type        = number
  default     = 30
}

variable "data_disk_gb" {
  description = "Size in GB of the managed data disk holding task outputs (and the PostgreSQL cluster unless managed_postgresql)."
  type        = number
  default     = 128
}

variable "data_disk_type" {
  description = "Storage account type of the data disk: Premium_LRS, StandardSSD_LRS or Standard_LRS."
  type        = string
  default     = "Premium_LRS"
}

variable "managed_postgresql" {
  description = "true: the database is an Azure Database for PostgreSQL flexible server; false: PostgreSQL runs on the VM, on the data disk."
  type        = bool
  default     = false
}

variable "postgresql_version" {
  description = "PostgreSQL major version of the flexible server (managed_postgresql only)."
  type        = string
  default     = "16"
}

variable "postgresql_sku" {
  description = "SKU of the flexible server, tier_family_size (managed_postgresql only)."
  type        = string
  default     = "B_Standard_B1ms"
}

variable "postgresql_storage_mb" {
  description = "Storage of the flexible server in MB, one of Azure's sizes: 32768, 65536, 131072... (managed_postgresql only)."
  type        = number
  default     = 32768
}

variable "tags" {
  description = "Tags put on every resource."
  type        = map(string)
  default     = {}
}
