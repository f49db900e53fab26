"""``python -m jaxreg.demo``."""

from jaxreg.demo import main

main()
