"""Pictures and the HTML report; the only layer that draws."""
