output "server_url" {
  description = "The scitq API, for clients and workers (scitq worker URL, SCITQ_SERVER)."
  value       = "http://${openstack_compute_instance_v2.server.access_ip_v4}:${var.scitq_port}"
}

output "server_ip" {
  description = "Public IPv4 address of the server."
  value       = openstack_compute_instance_v2.server.access_ip_v4
}

output "ssh_command" {
  description = "How to log in to the server."
  value       = "ssh ${var.image_user}@${openstack_compute_instance_v2.server.access_ip_v4}"
}

output "database_url" {
  description = "The URL scitq uses for its database, valid on the server itself (PostgreSQL listens on loopback only)."
  value       = local.database_url
  sensitive   = true
}
