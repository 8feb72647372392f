package main

import (
	"time"

	"github.com/leakybucket/leakybucket/dispatcher"
)

// A sample is what the soak read at one moment: a JSON line of -out, and
// a line of the progress.
type sample struct {
	At        time.Duration      `json:"-"`
	Elapsed   float64            `json:"elapsed_s"`
	Resources map[string]float64 `json:"resources"` // by resource name; a figure that could not be read is absent
	Jobs      jobFigures         `json:"jobs"`
	Stats     statsFigures       `json:"stats"`
}

// A kept sample is what the soak keeps of a sample for the judgement and
// the chart: about 130 bytes with eight resources, so that a run of a day
// at 10 s keeps about a megabyte, the heap's floor, and no sample holds a
// map of its own.
type kept struct {
	at       time.Duration
	perS     float64   // jobs finished a second
	finished int64     // jobs finished
	values   []float64 // by resource, in the soak's order; NaN: not read
}

// jobFigures are the soak's own count of its jobs.
type jobFigures struct {
	Accepted  int64   `json:"accepted"`
	Resolved  int64   `json:"resolved"` // seen resolved: the producer looks every thousand jobs
	Succeeded int64   `json:"succeeded"`
	Failed    int64   `json:"failed"`
	Cancelled int64   `json:"cancelled"`
	Keys      int64   `json:"keys"`  // keys given their first job
	PerSecond float64 `json:"per_s"` // jobs the dispatcher finished since the last sample, a second
}

// statsFigures are the dispatcher's Stats, as JSON.
type statsFigures struct {
	Submitted        int64   `json:"submitted"`
	Queued           int64   `json:"queued"`
	Waiting          int64   `json:"waiting"`
	Running          int64   `json:"running"`
	Succeeded        int64   `json:"succeeded"`
	Failed           int64   `json:"failed"`
	Cancelled        int64   `json:"cancelled"`
	Retried          int64   `json:"retried"`
	Requeued         int64   `json:"requeued"`
	Admitted         int64   `json:"admitted"`
	Throttled        int64   `json:"throttled"`
	Paused           int64   `json:"paused"`
	AtCap            int64   `json:"at_cap"`
	LeasesLost       int64   `json:"leases_lost"`
	RoundTrips       int64   `json:"round_trips"`
	BackendErrors    int64   `json:"backend_errors"`
	LastBackendError string  `json:"last_backend_error,omitempty"`
	WaitP50          float64 `json:"admission_wait_p50_ms"`
	WaitP99          float64 `json:"admission_wait_p99_ms"`
	WaitMax          float64 `json:"admission_wait_max_ms"`
}

func newStatsFigures(st dispatcher.Stats) statsFigures {
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	f := statsFigures{
		Submitted: st.Submitted, Queued: st.Queued, Waiting: st.Waiting, Running: st.Running,
		Succeeded: st.Succeeded, Failed: st.Failed, Cancelled: st.Cancelled, Retried: st.Retried,
		Requeued: st.Requeued, Admitted: st.Admitted, Throttled: st.Throttled, Paused: st.Paused,
		AtCap: st.AtCap, LeasesLost: st.LeasesLost, RoundTrips: st.RoundTrips,
		BackendErrors: st.BackendErrors,
		WaitP50:       ms(st.AdmissionWait.P50), WaitP99: ms(st.AdmissionWait.P99), WaitMax: ms(st.AdmissionWait.Max),
	}
	if st.LastBackendError != nil {
		f.LastBackendError = st.LastBackendError.Error()
	}
	return f
}

// finished counts the jobs the dispatcher has resolved.
func (f statsFigures) finished() int64 { return f.Succeeded + f.Failed + f.Cancelled }
