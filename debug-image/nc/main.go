// Command nc is the netcat of the kdlv debug image: it joins its stdin/stdout to one TCP connection, as the
// article's tunnel needs (`kubectl exec -i POD -- nc 127.0.0.1 2345`), and exits when either side ends.
//
// Unlike Debian's netcat-openbsd without -N, it does not linger when the client goes away: end of stdin
// half-closes the connection (so the server sees EOF), then nc waits at most -q seconds for the server to
// finish its answer. End of the connection ends nc at once.
//
//	usage: nc [-q SECONDS] HOST PORT
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

func main() {
	quit := flag.Duration("q", 5*time.Second, "after end of stdin, wait at most this long for the server to close")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: nc [-q DURATION] HOST PORT")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 2 {
		flag.Usage()
		os.Exit(2)
	}
	address := net.JoinHostPort(flag.Arg(0), flag.Arg(1))
	conn, err := net.DialTimeout("tcp", address, 10*time.Second)
	if err != nil {
		fmt.Fprintf(os.Stderr, "nc: %v\n", err)
		os.Exit(1)
	}
	os.Exit(pipe(conn.(*net.TCPConn), os.Stdin, os.Stdout, *quit))
}

// pipe copies in to conn and conn to out until the server closes, or until in ends and the server has
// had quit to close after the half-close. It returns the exit status.
func pipe(conn *net.TCPConn, in io.Reader, out io.Writer, quit time.Duration) int {
	defer conn.Close()
	remoteDone := make(chan error, 1)
	go func() {
		_, err := io.Copy(out, conn)
		remoteDone <- err
	}()
	localDone := make(chan error, 1)
	go func() {
		_, err := io.Copy(conn, in)
		localDone <- err
	}()
	select {
	case err := <-remoteDone:
		return status(err)
	case err := <-localDone:
		if err != nil {
			fmt.Fprintf(os.Stderr, "nc: %v\n", err)
		}
		conn.CloseWrite()
		select {
		case err := <-remoteDone:
			return status(err)
		case <-time.After(quit):
			return 0
		}
	}
}

func status(err error) int {
	if err != nil {
		fmt.Fprintf(os.Stderr, "nc: %v\n", err)
		return 1
	}
	return 0
}
