module kdlv/debug-image/nc

go 1.21
