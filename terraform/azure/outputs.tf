output "server_url" {
  description = "The scitq API, for clients and workers (scitq worker URL, SCITQ_SERVER)."
  value       = "http://${azurerm_public_ip.server.ip_address}:${var.scitq_port}"
}

output "server_ip" {
  description = "Public IPv4 address of the server (static: it outlives a rebuild of the VM)."
  value       = azurerm_public_ip.server.ip_address
}

output "ssh_command" {
  description = "How to log in to the server."
  value       = "ssh ${var.admin_username}@${azurerm_public_ip.server.ip_address}"
}

output "database_url" {
  description = "The URL scitq uses for its database: on the VM's loopback, or the flexible server (reachable from the VM's address only)."
  value       = local.database_url
  sensitive   = true
}
