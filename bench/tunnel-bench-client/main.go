// Command tunnel-bench-client measures one TCP endpoint for bench/tunnel-bench: Delve JSON-RPC round trips,
// connection setup, echo throughput, and a steady load of several clients. Standard library only, so the same
// static binary runs on the developer machine and inside the pod (the loopback floor).
//
//	tunnel-bench-client rtt   ADDR CALLS        one connection, CALLS x RPCServer.GetVersion: median and p95 (µs)
//	tunnel-bench-client setup ADDR CONNS        CONNS fresh connections one after another, each until its first
//	                                            GetVersion answer: total ms
//	tunnel-bench-client bulk  ADDR MIB          send MIB MiB to an echo service and read them back: MiB/s
//	tunnel-bench-client hold  ADDR CLIENTS SEC  CLIENTS connections calling GetVersion for SEC seconds: calls
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"net"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	if len(os.Args) < 4 {
		fmt.Fprintln(os.Stderr, "usage: tunnel-bench-client rtt|setup|bulk|hold ADDR N [SEC]")
		os.Exit(2)
	}
	addr := os.Args[2]
	n, err := strconv.Atoi(os.Args[3])
	check(err)
	switch os.Args[1] {
	case "rtt":
		rtt(addr, n)
	case "setup":
		setup(addr, n)
	case "bulk":
		bulk(addr, n)
	case "hold":
		sec, err := strconv.Atoi(os.Args[4])
		check(err)
		hold(addr, n, sec)
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", os.Args[1])
		os.Exit(2)
	}
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "tunnel-bench-client:", err)
		os.Exit(1)
	}
}

func dial(addr string) net.Conn {
	conn, err := net.DialTimeout("tcp", addr, 30*time.Second)
	check(err)
	return conn
}

// call sends one GetVersion request and reads one JSON object back (Delve's JSON-RPC has no newline framing).
func call(conn net.Conn, dec *json.Decoder, id int) error {
	req := fmt.Sprintf(`{"method":"RPCServer.GetVersion","params":[{}],"id":%d}`, id)
	if _, err := conn.Write([]byte(req)); err != nil {
		return err
	}
	var resp struct {
		ID     int             `json:"id"`
		Result json.RawMessage `json:"result"`
		Error  interface{}     `json:"error"`
	}
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	if err := dec.Decode(&resp); err != nil {
		return err
	}
	if resp.ID != id || resp.Error != nil || !bytes.Contains(resp.Result, []byte("DelveVersion")) {
		return fmt.Errorf("unexpected answer to call %d: %+v", id, resp)
	}
	return nil
}

func rtt(addr string, calls int) {
	conn := dial(addr)
	defer conn.Close()
	dec := json.NewDecoder(conn)
	for i := 0; i < 20; i++ { // warm the path
		check(call(conn, dec, i))
	}
	times := make([]time.Duration, calls)
	for i := range times {
		start := time.Now()
		check(call(conn, dec, 100+i))
		times[i] = time.Since(start)
	}
	sort.Slice(times, func(a, b int) bool { return times[a] < times[b] })
	fmt.Printf("%d %d\n", times[len(times)/2].Microseconds(), times[len(times)*95/100].Microseconds())
}

func setup(addr string, conns int) {
	start := time.Now()
	for i := 0; i < conns; i++ {
		conn := dial(addr)
		check(call(conn, json.NewDecoder(conn), i))
		conn.Close()
	}
	fmt.Printf("%d\n", time.Since(start).Milliseconds())
}

func bulk(addr string, mib int) {
	conn := dial(addr)
	defer conn.Close()
	total := mib << 20
	data := make([]byte, 1<<20)
	rand.New(rand.NewSource(1)).Read(data)
	start := time.Now()
	errs := make(chan error, 1)
	go func() {
		for sent := 0; sent < total; sent += len(data) {
			if _, err := conn.Write(data); err != nil {
				errs <- err
				return
			}
		}
		errs <- nil
	}()
	buf := make([]byte, 1<<20)
	got := 0
	for got < total {
		conn.SetReadDeadline(time.Now().Add(60 * time.Second))
		n, err := io.ReadAtLeast(conn, buf, 1)
		if n > 0 {
			offset := got % len(data)
			for k := 0; k < n; {
				m := n - k
				if m > len(data)-offset {
					m = len(data) - offset
				}
				if !bytes.Equal(buf[k:k+m], data[offset:offset+m]) {
					check(fmt.Errorf("echo differs at byte %d", got+k))
				}
				k += m
				offset = (offset + m) % len(data)
			}
			got += n
		}
		if err != nil {
			check(fmt.Errorf("after %d of %d bytes: %v", got, total, err))
		}
	}
	check(<-errs)
	fmt.Printf("%.1f\n", float64(total)/float64(1<<20)/time.Since(start).Seconds())
}

func hold(addr string, clients, sec int) {
	var calls int64
	var wg sync.WaitGroup
	end := time.Now().Add(time.Duration(sec) * time.Second)
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn := dial(addr)
			defer conn.Close()
			dec := json.NewDecoder(conn)
			for i := 0; time.Now().Before(end); i++ {
				check(call(conn, dec, i))
				atomic.AddInt64(&calls, 1)
			}
		}()
	}
	wg.Wait()
	fmt.Printf("%d\n", calls)
}
