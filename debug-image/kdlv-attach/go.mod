module kdlv.dev/debug-image/kdlv-attach

go 1.21
