module kdlv.local/pause

go 1.22
