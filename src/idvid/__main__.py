from idvid.cli import main

main()
