// The fast path of the program the shim starts for a task's stdio (see host.py): hand the
// task's pipes (fds 3 and 4) to the host's shared writer, then become the waiting shell.
//
// A Python start costs 10-20 ms of CPU per container, on every deploy; this costs about one.
// Anything short of the writer's "k" (no writer yet, a refusal, an error) execs the Python
// program instead, which starts a writer, retries, or writes the pipes itself: this file
// only repeats the common case. The launcher's shell lines already closed the readiness fd
// and ignore SIGTERM, and pass everything the path needs:
//
//	scheduler-logger-handover SCRIPT SOCKET WAIT_SCRIPT INTERPRETER [key value]...
//
// Built at install (GOPATH mode, standard library only) into the virtualenv's bin.
package main

import (
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
)

const (
	stdoutFd = 3
	stderrFd = 4
	waiter   = "/bin/sh"
	program  = "scheduler-logger"
)

func main() {
	// Ignored at the OS level, so that the waiting shell inherits it (the shim's SIGTERM on
	// task delete must wait for the writer's drain, as the Python path does).
	signal.Ignore(syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	if len(os.Args) < 5 {
		os.Exit(2)
	}
	script, socket, waitScript, interpreter := os.Args[1], os.Args[2], os.Args[3], os.Args[4]
	pairs := os.Args[5:]
	again := append([]string{interpreter, "-IS", script}, pairs...)
	directory, ok := dir(pairs)
	if ok {
		if connection, handed := handOver(filepath.Dir(script), socket, pairs); handed {
			wait(connection, directory, waitScript, again)
		}
	}
	// The Python program: it starts a shared writer, tries again, or writes the pipes itself.
	_ = syscall.Exec(interpreter, again, os.Environ())
	os.Exit(1)
}

// dir is the "dir" value of key value pairs; anything odd is left to the Python program.
func dir(pairs []string) (string, bool) {
	if len(pairs)%2 != 0 {
		return "", false
	}
	for i := 0; i < len(pairs); i += 2 {
		if pairs[i] == "dir" {
			return pairs[i+1], true
		}
	}
	return "", false
}

// handOver passes fds 3 and 4 with the arguments to the writer; true once it answered "k".
func handOver(home, socket string, pairs []string) (int, bool) {
	if syscall.Chdir(home) != nil { // socket paths are short (108 bytes): connect by relative name
		return -1, false
	}
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_SEQPACKET|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, false
	}
	timeout := syscall.Timeval{Sec: 3}
	if syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &timeout) == nil &&
		syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_SNDTIMEO, &timeout) == nil &&
		syscall.Connect(fd, &syscall.SockaddrUnix{Name: socket}) == nil &&
		syscall.Sendmsg(fd, []byte(strings.Join(pairs, "\x00")), syscall.UnixRights(stdoutFd, stderrFd), nil, 0) == nil {
		reply := make([]byte, 256)
		if n, err := syscall.Read(fd, reply); err == nil && n == 1 && reply[0] == 'k' {
			forever := syscall.Timeval{}
			if syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &forever) == nil {
				return fd, true
			}
		}
	}
	syscall.Close(fd)
	return -1, false
}

// wait execs the shell that ends when the writer says the task's streams are done (see host.wait_on).
func wait(connection int, directory, waitScript string, again []string) {
	null, err := syscall.Open("/dev/null", syscall.O_WRONLY|syscall.O_CLOEXEC, 0)
	if err != nil || syscall.Dup2(connection, 0) != nil || syscall.Dup2(null, 1) != nil {
		os.Exit(1) // the writer holds the pipes now: nothing is left to fall back on
	}
	argv := append([]string{program + "-wait dir " + directory, "-c", waitScript, program + "-wait"}, again...)
	_ = syscall.Exec(waiter, argv, os.Environ())
	os.Exit(1)
}
