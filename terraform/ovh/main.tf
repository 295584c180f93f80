# The scitq server's own host on OVHcloud Public Cloud, through its OpenStack API.
# Credentials: source the project's openrc file (OS_USERNAME, OS_PASSWORD, OS_TENANT_ID...).

provider "openstack" {
  auth_url    = var.auth_url
  domain_name = "default" # always "default" on OVHcloud
  region      = var.region
}

resource "random_password" "db" {
  length  = 32
  special = false # the password goes into a URL, a shell script and SQL unquoted
}

locals {
  database_url = "postgresql://scitq:${random_password.db.result}@127.0.0.1:5432/scitq"

  cloud_init_vars = {
    scitq_package    = var.scitq_package
    scitq_port       = var.scitq_port
    database_url     = local.database_url
    maintenance_url  = "postgresql://scitq:${random_password.db.result}@127.0.0.1:5432/postgres"
    db_password      = random_password.db.result
    local_postgresql = true
    # Nova gives the volume's id (cut to 20 characters on virtio) as the disk's serial.
    data_disk_paths = "/dev/disk/by-id/*${substr(openstack_blockstorage_volume_v3.data.id, 0, 20)}*"
  }
}

resource "openstack_compute_keypair_v2" "admin" {
  name       = "${var.name}-admin"
  public_key = var.ssh_public_key
}

resource "openstack_networking_secgroup_v2" "server" {
  name        = var.name
  description = "scitq server: SSH and the scitq API"
}

resource "openstack_networking_secgroup_rule_v2" "ssh" {
  for_each          = toset(var.ssh_cidrs)
  security_group_id = openstack_networking_secgroup_v2.server.id
  direction         = "ingress"
  ethertype         = strcontains(each.value, ":") ? "IPv6" : "IPv4"
  protocol          = "tcp"
  port_range_min    = 22
  port_range_max    = 22
  remote_ip_prefix  = each.value
}

resource "openstack_networking_secgroup_rule_v2" "scitq" {
  for_each          = toset(var.scitq_cidrs)
  security_group_id = openstack_networking_secgroup_v2.server.id
  direction         = "ingress"
  ethertype         = strcontains(each.value, ":") ? "IPv6" : "IPv4"
  protocol          = "tcp"
  port_range_min    = var.scitq_port
  port_range_max    = var.scitq_port
  remote_ip_prefix  = each.value
}

resource "openstack_blockstorage_volume_v3" "data" {
  name        = "${var.name}-data"
  description = "scitq server data: task outputs and the PostgreSQL cluster"
  size        = var.data_volume_gb
  volume_type = var.data_volume_type
}

resource "openstack_compute_instance_v2" "server" {
  name            = var.name
  image_name      = var.image
  flavor_name     = var.flavor
  key_pair        = openstack_compute_keypair_v2.admin.name
  security_groups = [openstack_networking_secgroup_v2.server.name]
  user_data       = templatefile("${path.module}/cloud-init.yaml.tftpl", local.cloud_init_vars)

  network {
    name = var.network
  }

  lifecycle {
    # A new instance means a new address on Ext-Net, which every worker knows the server by:
    # a newer "Debian 12" image or an edited cloud-init must not replace it behind your back.
    # To rebuild on purpose: terraform apply -replace=openstack_compute_instance_v2.server
    ignore_changes = [image_name, image_id, user_data]
  }
}

resource "openstack_compute_volume_attach_v2" "data" {
  instance_id = openstack_compute_instance_v2.server.id
  volume_id   = openstack_blockstorage_volume_v3.data.id
}
