from scitq.cli import main

main()
