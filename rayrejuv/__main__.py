from rayrejuv.cli import main

main()
