# The scitq server's own host on Azure: one Debian VM with a managed data disk, and
# PostgreSQL either on the VM or as an Azure Database for PostgreSQL flexible server.
# Credentials: az login (or ARM_* variables for a service principal).

provider "azurerm" {
  features {}
  subscription_id = var.subscription_id
}

resource "random_password" "db" {
  length  = 32
  special = false # the password goes into a URL, a shell script and SQL unquoted
  # Azure wants three kinds of characters in a flexible server's password.
  min_upper   = 2
  min_lower   = 2
  min_numeric = 2
}

locals {
  data_disk_lun = 10
  db_host       = var.managed_postgresql ? azurerm_postgresql_flexible_server.db[0].fqdn : "127.0.0.1"
  db_options    = var.managed_postgresql ? "?sslmode=require" : ""
  database_url  = "postgresql://scitq:${random_password.db.result}@${local.db_host}:5432/scitq${local.db_options}"

  cloud_init_vars = {
    scitq_package    = var.scitq_package
    scitq_port       = var.scitq_port
    database_url     = local.database_url
    maintenance_url  = "postgresql://scitq:${random_password.db.result}@${local.db_host}:5432/postgres${local.db_options}"
    db_password      = random_password.db.result
    local_postgresql = !var.managed_postgresql
    # The Azure agent's udev rules name data disks by LUN; by-path is the fallback.
    data_disk_paths = "/dev/disk/azure/scsi1/lun${local.data_disk_lun} /dev/disk/by-path/*-lun-${local.data_disk_lun}"
  }
}

resource "azurerm_resource_group" "main" {
  name     = "${var.name}-rg"
  location = var.location
  tags     = var.tags
}

resource "azurerm_virtual_network" "main" {
  name                = "${var.name}-vnet"
  resource_group_name = azurerm_resource_group.main.name
  location            = azurerm_resource_group.main.location
  address_space       = [var.address_space]
  tags                = var.tags
}

resource "azurerm_subnet" "server" {
  name                 = "${var.name}-subnet"
  resource_group_name  = azurerm_resource_group.main.name
  virtual_network_name = azurerm_virtual_network.main.name
  address_prefixes     = [var.subnet_prefix]
}

resource "azurerm_network_security_group" "server" {
  name                = "${var.name}-nsg"
  resource_group_name = azurerm_resource_group.main.name
  location            = azurerm_resource_group.main.location
  tags                = var.tags
}

resource "azurerm_network_security_rule" "ssh" {
  name                        = "ssh"
  priority                    = 100
  direction                   = "Inbound"
  access                      = "Allow"
  protocol                    = "Tcp"
  source_port_range           = "*"
  destination_port_range      = "22"
  source_address_prefixes     = var.ssh_cidrs
  destination_address_prefix  = "*"
  resource_group_name         = azurerm_resource_group.main.name
  network_security_group_name = azurerm_network_security_group.server.name
}

resource "azurerm_network_security_rule" "scitq" {
  name                        = "scitq"
  priority                    = 110
  direction                   = "Inbound"
  access                      = "Allow"
  protocol                    = "Tcp"
  source_port_range           = "*"
  destination_port_range      = tostring(var.scitq_port)
  source_address_prefixes     = var.scitq_cidrs
  destination_address_prefix  = "*"
  resource_group_name         = azurerm_resource_group.main.name
  network_security_group_name = azurerm_network_security_group.server.name
}

resource "azurerm_public_ip" "server" {
  name                = "${var.name}-ip"
  resource_group_name = azurerm_resource_group.main.name
  location            = azurerm_resource_group.main.location
  allocation_method   = "Static"
  sku                 = "Standard"
  tags                = var.tags
}

resource "azurerm_network_interface" "server" {
  name                = "${var.name}-nic"
  resource_group_name = azurerm_resource_group.main.name
  location            = azurerm_resource_group.main.location
  tags                = var.tags

  ip_configuration {
    name                          = "primary"
    subnet_id                     = azurerm_subnet.server.id
    private_ip_address_allocation = "Dynamic"
    public_ip_address_id          = azurerm_public_ip.server.id
  }
}

resource "azurerm_network_interface_security_group_association" "server" {
  network_interface_id      = azurerm_network_interface.server.id
  network_security_group_id = azurerm_network_security_group.server.id
}

resource "azurerm_managed_disk" "data" {
  name                 = "${var.name}-data"
  resource_group_name  = azurerm_resource_group.main.name
  location             = azurerm_resource_group.main.location
  storage_account_type = var.data_disk_type
  create_option        = "Empty"
  disk_size_gb         = var.data_disk_gb
  tags                 = var.tags
}

resource "azurerm_linux_virtual_machine" "server" {
  name                            = var.name
  resource_group_name             = azurerm_resource_group.main.name
  location                        = azurerm_resource_group.main.location
  size                            = var.vm_size
  admin_username                  = var.admin_username
  disable_password_authentication = true
  network_interface_ids           = [azurerm_network_interface.server.id]
  custom_data                     = base64encode(templatefile("${path.module}/cloud-init.yaml.tftpl", local.cloud_init_vars))
  tags                            = var.tags

  admin_ssh_key {
    username   = var.admin_username
    public_key = var.ssh_public_key
  }

  os_disk {
    caching              = "ReadWrite"
    storage_account_type = "StandardSSD_LRS"
    disk_size_gb         = var.os_disk_gb
  }

  source_image_reference {
    publisher = "Debian"
    offer     = "debian-12"
    sku       = "12-gen2"
    version   = "latest"
  }

  lifecycle {
    # cloud-init runs once, at the first boot: an edited template must not replace the
    # server behind your back. To rebuild on purpose (the data disk and the IP stay):
    # terraform apply -replace=azurerm_linux_virtual_machine.server
    ignore_changes = [custom_data]
  }
}

resource "azurerm_virtual_machine_data_disk_attachment" "data" {
  managed_disk_id    = azurerm_managed_disk.data.id
  virtual_machine_id = azurerm_linux_virtual_machine.server.id
  lun                = local.data_disk_lun
  caching            = "ReadOnly" # safe for a database: writes go straight to the disk
}

# --- managed_postgresql = true: Azure Database for PostgreSQL flexible server ---

resource "azurerm_postgresql_flexible_server" "db" {
  count = var.managed_postgresql ? 1 : 0
  # Server names are global to Azure: the resource group's id makes this one unique.
  name                          = "${var.name}-${substr(sha1(azurerm_resource_group.main.id), 0, 8)}"
  resource_group_name           = azurerm_resource_group.main.name
  location                      = azurerm_resource_group.main.location
  version                       = var.postgresql_version
  sku_name                      = var.postgresql_sku
  storage_mb                    = var.postgresql_storage_mb
  administrator_login           = "scitq"
  administrator_password        = random_password.db.result
  backup_retention_days         = 7
  public_network_access_enabled = true # reached by the VM's address only, see the firewall rule
  tags                          = var.tags

  lifecycle {
    # Azure picks a zone, and moves the server to another on a fail-over.
    ignore_changes = [zone]
  }
}

resource "azurerm_postgresql_flexible_server_firewall_rule" "server" {
  count            = var.managed_postgresql ? 1 : 0
  name             = "scitq-server"
  server_id        = azurerm_postgresql_flexible_server.db[0].id
  start_ip_address = azurerm_public_ip.server.ip_address
  end_ip_address   = azurerm_public_ip.server.ip_address
}
