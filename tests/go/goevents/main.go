// goevents: goroutine transitions with known causes and durations, the oracle for the
// per-event Go probes of `schedlat capture`.
//
// Modes:
//
//	goevents            protocol below
//	goevents syscalls long|short
//	                    prints the ready line, waits for `go`, makes known long (blocking) or
//	                    short system calls (see syscalls), prints {"done":true,"syscalls":N,
//	                    "ms":M} and waits for `exit`
//	goevents pingpong N prints the ready line, waits for `go`, then two goroutines hand a
//	                    token over unbuffered channels N round trips; prints
//	                    {"rounds":N,"ns":T} and waits for `exit` (the benchmark's workload)
//
// Protocol (stdout is one JSON object per line):
//
//	-> {"ready":true,"pid":P,"go_version":"go1.x.y"}
//	<- go
//	   contention: GOMAXPROCS=1, 4 CPU-bound goroutines yielding for 300 ms, one goroutine
//	   sleeping 1 ms 100 times; then, one after another, each repeated `reps` times:
//	   a receive blocked 50 ms on an unbuffered channel, a send blocked 40 ms, a select blocked
//	   35 ms, a sync.Mutex.Lock blocked 30 ms, a time.Sleep of 20 ms
//	-> {"done":true,"reps":R,"created":N}
//	<- exit
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const reps = 5

func main() {
	if len(os.Args) == 3 && os.Args[1] == "pingpong" {
		n, err := strconv.Atoi(os.Args[2])
		if err != nil || n <= 0 {
			fmt.Fprintln(os.Stderr, "goevents: pingpong needs a positive round count")
			os.Exit(2)
		}
		// Wait for `go`, so a tracer can attach first.
		in := bufio.NewScanner(os.Stdin)
		emit(map[string]any{"ready": true, "pid": os.Getpid(), "go_version": runtime.Version()})
		expect(in, "go")
		emit(map[string]any{"rounds": n, "ns": pingpong(n).Nanoseconds()})
		// Stay alive until told, so a capture can read the runtime at its end.
		expect(in, "exit")
		return
	}
	if len(os.Args) == 3 && os.Args[1] == "syscalls" {
		in := bufio.NewScanner(os.Stdin)
		emit(map[string]any{"ready": true, "pid": os.Getpid(), "go_version": runtime.Version()})
		expect(in, "go")
		n, ms := syscalls(os.Args[2])
		emit(map[string]any{"done": true, "syscalls": n, "ms": ms})
		expect(in, "exit")
		return
	}
	in := bufio.NewScanner(os.Stdin)
	emit(map[string]any{"ready": true, "pid": os.Getpid(), "go_version": runtime.Version()})
	expect(in, "go")
	created := contention()
	blocking()
	emit(map[string]any{"done": true, "reps": reps, "created": created})
	expect(in, "exit")
}

func pingpong(n int) time.Duration {
	ping, pong := make(chan int), make(chan int)
	go func() {
		for v := range ping {
			pong <- v
		}
	}()
	start := time.Now()
	for i := 0; i < n; i++ {
		ping <- i
		<-pong
	}
	d := time.Since(start)
	close(ping)
	return d
}

// contention returns how many goroutines it started.
func contention() int {
	prev := runtime.GOMAXPROCS(1)
	defer runtime.GOMAXPROCS(prev)
	var wg sync.WaitGroup
	deadline := time.Now().Add(300 * time.Millisecond)
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			x := uint64(1)
			for time.Now().Before(deadline) {
				for j := 0; j < 20000; j++ {
					x = x*6364136223846793005 + 1442695040888963407
				}
				runtime.Gosched()
			}
			sinkV.Store(x)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for j := 0; j < 100; j++ {
			time.Sleep(time.Millisecond)
		}
	}()
	wg.Wait()
	return 5
}

func blocking() {
	for i := 0; i < reps; i++ {
		// Receiver blocks until the sender, which sleeps first, sends.
		ch := make(chan int)
		go func() { time.Sleep(50 * time.Millisecond); ch <- 1 }()
		<-ch
	}
	for i := 0; i < reps; i++ {
		ch := make(chan int)
		done := make(chan struct{})
		go func() { time.Sleep(40 * time.Millisecond); <-ch; close(done) }()
		ch <- 1
		<-done
	}
	for i := 0; i < reps; i++ {
		a, b := make(chan int), make(chan int)
		go func() { time.Sleep(35 * time.Millisecond); b <- 1 }()
		select {
		case <-a:
		case <-b:
		}
	}
	for i := 0; i < reps; i++ {
		var mu sync.Mutex
		locked := make(chan struct{})
		go func() {
			mu.Lock()
			close(locked)
			time.Sleep(30 * time.Millisecond)
			mu.Unlock()
		}()
		<-locked
		mu.Lock()
		mu.Unlock()
	}
	for i := 0; i < reps; i++ {
		time.Sleep(20 * time.Millisecond)
	}
}

// syscalls makes system calls under GOMAXPROCS=1 while one CPU-bound goroutine waits for the
// P: "long" sleeps 50 ms in nanosleep 10 times (sysmon, which may sleep 10 ms between looks
// and retakes a P seen twice in one syscall, hands the P to the spinner, so each
// return finds it taken: runtime/proc.go retake, exitsyscall0), "short" writes one byte to
// /dev/null 2000 times (over before sysmon looks). Returns how many and how long each (ms).
func syscalls(mode string) (int, int) {
	prev := runtime.GOMAXPROCS(1)
	defer runtime.GOMAXPROCS(prev)
	var stop atomic.Bool
	done := make(chan struct{})
	go func() {
		x := uint64(1)
		for !stop.Load() {
			for j := 0; j < 20000; j++ {
				x = x*6364136223846793005 + 1442695040888963407
			}
		}
		sinkV.Store(x)
		close(done)
	}()
	runtime.Gosched() // the spinner runs, then waits on the run queue
	n, ms := 0, 0
	switch mode {
	case "long":
		ms = 50
		for i := 0; i < 10; i++ {
			ts := syscall.Timespec{Nsec: int64(ms) * 1e6}
			if err := syscall.Nanosleep(&ts, nil); err != nil {
				fmt.Fprintln(os.Stderr, "goevents: nanosleep:", err)
				os.Exit(1)
			}
			n++
		}
	case "short":
		fd, err := syscall.Open("/dev/null", syscall.O_WRONLY, 0)
		if err != nil {
			fmt.Fprintln(os.Stderr, "goevents: open /dev/null:", err)
			os.Exit(1)
		}
		b := []byte{0}
		for i := 0; i < 2000; i++ {
			if _, err := syscall.Write(fd, b); err != nil {
				fmt.Fprintln(os.Stderr, "goevents: write:", err)
				os.Exit(1)
			}
			n++
		}
		syscall.Close(fd)
	default:
		fmt.Fprintln(os.Stderr, "goevents: syscalls needs long or short")
		os.Exit(2)
	}
	stop.Store(true)
	<-done
	return n, ms
}

// Keeps the spin loops from being optimised away (sync/atomic.Uint64: Go >= 1.19).
var sinkV atomic.Uint64

func emit(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		fmt.Fprintln(os.Stderr, "goevents: encoding JSON:", err)
		os.Exit(1)
	}
	os.Stdout.Write(append(b, '\n'))
}

func expect(in *bufio.Scanner, word string) {
	if !in.Scan() || in.Text() != word {
		fmt.Fprintf(os.Stderr, "goevents: expected %q on stdin, got %q (err %v)\n", word, in.Text(), in.Err())
		os.Exit(1)
	}
}
