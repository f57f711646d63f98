from ikto.cli import main

main()
