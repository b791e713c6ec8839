"""The console's pages, one module each: its routes, its handlers, what it reads."""
