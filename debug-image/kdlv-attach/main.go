// kdlv-attach runs in the debugger container: it finds the Go process of the target container in the
// shared PID namespace and replaces itself with `dlv attach PID ARGS...`.
//
// The target is not always PID 1: shell wrappers, tini and dumb-init start it as a child, and a runtime
// that shares the pod's PID namespace shows the pause process. So every process whose executable is a Go
// binary is a candidate, except this one and the pause process; the lowest PID wins, and the choice is
// printed on stderr (the container log), where attach.java reads it:
//
//	kdlv-attach: pid=7 go=go1.26.8 exe=/app/demo-service candidates=7
package main

import (
	"debug/buildinfo"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

type process struct {
	pid       int
	exe       string
	goVersion string
}

func main() {
	pid := flag.Int("pid", 0, "attach to this PID instead of searching for the Go process")
	dlv := flag.String("dlv", "dlv", "the Delve binary")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: kdlv-attach [--pid N] [--dlv PATH] -- DLV_ATTACH_ARGS...")
		flag.PrintDefaults()
	}
	flag.Parse()

	candidates := goProcesses()
	var target process
	if *pid != 0 {
		target = describe(*pid)
		if target.exe == "" {
			fail("no process with PID %d is visible here: is the debugger container targeting the right container?", *pid)
		}
	} else {
		if len(candidates) == 0 {
			fail("no Go process is visible in this PID namespace (processes: %s); the target may not be a Go program, or the runtime ignored targetContainerName", strings.Join(allProcesses(), ", "))
		}
		target = candidates[0]
	}
	pids := make([]string, 0, len(candidates))
	for _, c := range candidates {
		pids = append(pids, strconv.Itoa(c.pid))
	}
	fmt.Fprintf(os.Stderr, "kdlv-attach: pid=%d go=%s exe=%s candidates=%s\n",
		target.pid, orNone(target.goVersion), target.exe, strings.Join(pids, ","))

	path, err := exec.LookPath(*dlv)
	if err != nil {
		fail("no Delve binary %q in this image: %v", *dlv, err)
	}
	args := append([]string{"dlv", "attach", strconv.Itoa(target.pid)}, flag.Args()...)
	fail("cannot start Delve: %v", syscall.Exec(path, args, os.Environ()))
}

// goProcesses lists the Go processes other than this one and the pause process, lowest PID first.
func goProcesses() []process {
	self := os.Getpid()
	var found []process
	for _, pid := range pids() {
		if pid == self {
			continue
		}
		p := describe(pid)
		if p.goVersion == "" || filepath.Base(p.exe) == "pause" {
			continue
		}
		found = append(found, p)
	}
	sort.Slice(found, func(i, j int) bool { return found[i].pid < found[j].pid })
	return found
}

func describe(pid int) process {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return process{pid: pid}
	}
	p := process{pid: pid, exe: exe}
	if info, err := buildinfo.ReadFile(fmt.Sprintf("/proc/%d/exe", pid)); err == nil {
		p.goVersion = info.GoVersion
	}
	return p
}

func pids() []int {
	entries, _ := os.ReadDir("/proc")
	var list []int
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			list = append(list, pid)
		}
	}
	return list
}

func allProcesses() []string {
	var names []string
	for _, pid := range pids() {
		if p := describe(pid); p.exe != "" {
			names = append(names, fmt.Sprintf("%d=%s", pid, filepath.Base(p.exe)))
		}
	}
	return names
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "kdlv-attach: "+format+"\n", args...)
	os.Exit(1)
}
