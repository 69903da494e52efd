package main

import (
	"bytes"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// An echo server that answers after the client half-closes: nc must deliver the answer, then exit.
func TestHalfCloseDeliversTheAnswer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		data, _ := io.ReadAll(c)
		c.Write(bytes.ToUpper(data))
		c.Close()
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if code := pipe(conn.(*net.TCPConn), strings.NewReader("hello"), &out, 5*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if out.String() != "HELLO" {
		t.Fatalf("got %q", out.String())
	}
}

// A server that never closes (like Delve with a client gone): nc exits within -q after end of stdin.
func TestExitsWhenClientEndsAndServerLingers(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			time.Sleep(10 * time.Second)
			c.Close()
		}
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	pipe(conn.(*net.TCPConn), strings.NewReader(""), io.Discard, 200*time.Millisecond)
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Fatalf("nc lingered %v", elapsed)
	}
}

// The server closes first: nc exits at once even though stdin stays open.
func TestExitsWhenServerCloses(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Write([]byte("bye"))
			c.Close()
		}
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	stdin, _ := io.Pipe() // never ends
	var out bytes.Buffer
	done := make(chan int)
	go func() { done <- pipe(conn.(*net.TCPConn), stdin, &out, time.Minute) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("nc did not exit when the server closed")
	}
	if out.String() != "bye" {
		t.Fatalf("got %q", out.String())
	}
}
