from bgpd.cli import main

main()
