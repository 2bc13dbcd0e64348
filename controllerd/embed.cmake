# Turn the file IN into a C source OUT defining kumo_dashboard_html[].
file(READ ${IN} hex HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
file(WRITE ${OUT} "const char kumo_dashboard_html[] = {${bytes} 0x00};\n")
