"""``python -m jaxreg.demo``."""

from jaxreg.demo import main

if __name__ == "__main__":  # importing this module (pkgutil.walk_packages does) runs nothing
    main()
