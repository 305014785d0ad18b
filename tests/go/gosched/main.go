// gosched: goroutine scheduling contention under a GOMAXPROCS limit, then the runtime's own
// view of it from runtime/metrics, the oracle for `schedlat go-stats`.
//
// Protocol (stdout is one JSON object per line):
//
//	-> {"ready":true,"pid":P,"go_version":"go1.x.y"}
//	<- go
//	   load phase: CPU-bound goroutines > GOMAXPROCS, plus goroutines sleeping and waking
//	-> {"gomaxprocs":N,"goroutines":N,"num_goroutine":N,"sched_latencies":{"buckets":[...],
//	    "counts":[...]},...} (Go >= 1.26 also goroutines by state, created, threads)
//	<- metrics      (any number of times: read and print runtime/metrics again)
//	-> {...}
//	<- memstats     (runtime.ReadMemStats: GC cycles and the pauses of the latest 256)
//	-> {"num_gc":N,"pause_ns":[oldest, ..., latest]}
//	<- gc N         (runtime.GC() N times, then the memstats line)
//	-> {"num_gc":N,"pause_ns":[...]}
//	<- exit
//
// Between commands the program only blocks reading stdin, so a reader outside sees the
// counts change only through the runtime's own background goroutines (scavenger, GC).
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Not the machine's CPU count, so a reader that guesses from the host cannot match by luck.
// GOSCHED_MAXPROCS overrides it (the daemon test runs two settings in one series).
var maxProcs = 3

type hist struct {
	// Bucket boundaries as strings: -Inf/+Inf are not valid JSON numbers.
	Buckets []string `json:"buckets"`
	Counts  []uint64 `json:"counts"`
}

func main() {
	if v, err := strconv.Atoi(os.Getenv("GOSCHED_MAXPROCS")); err == nil && v > 0 {
		maxProcs = v
	}
	runtime.GOMAXPROCS(maxProcs)
	in := bufio.NewScanner(os.Stdin)
	emit(map[string]any{"ready": true, "pid": os.Getpid(), "go_version": runtime.Version()})
	expect(in, "go")
	load()
	emit(readMetrics())
	for in.Scan() {
		switch in.Text() {
		case "metrics":
			emit(readMetrics())
		case "memstats":
			emit(readMemStats())
		case "exit":
			return
		default:
			if strings.HasPrefix(in.Text(), "gc ") {
				count, err := strconv.Atoi(strings.TrimPrefix(in.Text(), "gc "))
				if err != nil || count < 0 {
					fmt.Fprintf(os.Stderr, "gosched: bad count in %q\n", in.Text())
					os.Exit(1)
				}
				for i := 0; i < count; i++ {
					runtime.GC()
				}
				emit(readMemStats())
				continue
			}
			fmt.Fprintf(os.Stderr, "gosched: unknown command %q\n", in.Text())
			os.Exit(1)
		}
	}
	fmt.Fprintln(os.Stderr, "gosched: stdin closed before exit:", in.Err())
	os.Exit(1)
}

func emit(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gosched: encoding JSON:", err)
		os.Exit(1)
	}
	os.Stdout.Write(append(b, '\n'))
}

func expect(in *bufio.Scanner, word string) {
	if !in.Scan() || in.Text() != word {
		fmt.Fprintf(os.Stderr, "gosched: expected %q on stdin, got %q (err %v)\n", word, in.Text(), in.Err())
		os.Exit(1)
	}
}

// load: 4*GOMAXPROCS spinning goroutines that yield, and 16 that sleep 1 ms and wake 40 times.
func load() {
	var wg sync.WaitGroup
	deadline := time.Now().Add(300 * time.Millisecond)
	for i := 0; i < 4*maxProcs; i++ {
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
			sink(x)
		}()
	}
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 40; j++ {
				time.Sleep(time.Millisecond)
			}
		}()
	}
	wg.Wait()
	// Stop-the-world pauses: each GC cycle stops the world twice (sweep termination, mark
	// termination).
	for i := 0; i < 3; i++ {
		runtime.GC()
	}
}

var sinkMu sync.Mutex
var sinkV uint64

func sink(x uint64) {
	sinkMu.Lock()
	sinkV += x
	sinkMu.Unlock()
}

// readMemStats: NumGC and the pauses still in MemStats.PauseNs (a ring of 256 indexed by
// cycle number, runtime/mstats.go), oldest first. ReadMemStats stops the world but is not a
// GC cycle: it changes neither.
func readMemStats() map[string]any {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	n := int(m.NumGC)
	k := n
	if k > len(m.PauseNs) {
		k = len(m.PauseNs)
	}
	pauses := make([]uint64, 0, k)
	for c := n - k; c < n; c++ {
		pauses = append(pauses, m.PauseNs[c%len(m.PauseNs)])
	}
	return map[string]any{"num_gc": m.NumGC, "pause_ns": pauses}
}

func readMetrics() map[string]any {
	supported := map[string]bool{}
	for _, d := range metrics.All() {
		supported[d.Name] = true
	}
	names := []string{
		"/sched/latencies:seconds",
		"/sched/gomaxprocs:threads",
		"/sched/goroutines:goroutines",
		// Go >= 1.22 only.
		"/sched/pauses/total/gc:seconds",
		"/sched/pauses/stopping/gc:seconds",
		"/sched/pauses/total/other:seconds",
		"/sched/pauses/stopping/other:seconds",
		// Go >= 1.26 only.
		"/sched/goroutines/runnable:goroutines",
		"/sched/goroutines/running:goroutines",
		"/sched/goroutines/waiting:goroutines",
		"/sched/goroutines/not-in-go:goroutines",
		"/sched/goroutines-created:goroutines",
		"/sched/threads/total:threads",
	}
	var samples []metrics.Sample
	for _, n := range names {
		if supported[n] {
			samples = append(samples, metrics.Sample{Name: n})
		}
	}
	metrics.Read(samples)
	// runtime.NumGoroutine (gcount() without system goroutines), read with the metrics.
	out := map[string]any{"go_version": runtime.Version(), "num_goroutine": runtime.NumGoroutine()}
	for _, s := range samples {
		var v any
		switch s.Value.Kind() {
		case metrics.KindUint64:
			v = s.Value.Uint64()
		case metrics.KindFloat64Histogram:
			h := s.Value.Float64Histogram()
			bs := make([]string, len(h.Buckets))
			for i, b := range h.Buckets {
				bs[i] = strconv.FormatFloat(b, 'g', -1, 64)
			}
			v = hist{Buckets: bs, Counts: h.Counts}
		default:
			continue
		}
		switch s.Name {
		case "/sched/latencies:seconds":
			out["sched_latencies"] = v
		case "/sched/gomaxprocs:threads":
			out["gomaxprocs"] = v
		case "/sched/goroutines:goroutines":
			out["goroutines"] = v
		case "/sched/pauses/total/gc:seconds":
			out["pauses_total_gc"] = v
		case "/sched/pauses/stopping/gc:seconds":
			out["pauses_stopping_gc"] = v
		case "/sched/pauses/total/other:seconds":
			out["pauses_total_other"] = v
		case "/sched/pauses/stopping/other:seconds":
			out["pauses_stopping_other"] = v
		case "/sched/goroutines/runnable:goroutines":
			out["goroutines_runnable"] = v
		case "/sched/goroutines/running:goroutines":
			out["goroutines_running"] = v
		case "/sched/goroutines/waiting:goroutines":
			out["goroutines_waiting"] = v
		case "/sched/goroutines/not-in-go:goroutines":
			out["goroutines_not_in_go"] = v
		case "/sched/goroutines-created:goroutines":
			out["goroutines_created"] = v
		case "/sched/threads/total:threads":
			out["threads"] = v
		}
	}
	return out
}
