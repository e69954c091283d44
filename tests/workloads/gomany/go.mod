module gomany

go 1.19
