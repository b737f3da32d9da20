# The installed package: exported symbols, soname, consumers through find_package and pkg-config.
