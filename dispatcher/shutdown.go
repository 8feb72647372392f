package dispatcher

import "context"

// Shutdown stops intake (Submit returns ErrClosed), lets queued jobs run
// as their limits admit them, and waits for running jobs. If ctx ends
// first it cancels running jobs' contexts, resolves the jobs that have not
// started with ErrClosed, waits for the running ones to return, and
// returns ctx's error. It is idempotent, and when it returns no goroutine
// of the dispatcher is left (a Stream still runs until its input is closed
// or its context ends, answering ErrClosed). Handlers that ignore their
// context delay it.
func (d *Dispatcher[T, R]) Shutdown(ctx context.Context) error {
	d.closeIntake()
	var err error
	select {
	case <-d.drained:
	default:
		select {
		case <-d.drained:
		case <-ctx.Done():
			err = ctx.Err()
			d.hardStop()
			<-d.drained
		}
	}
	d.stopOnce.Do(func() {
		// Every job is resolved: what the backend is still asked (a
		// refund of a late or cancelled job's admission) may be cut short,
		// which can only under-admit, rather than hold Shutdown up.
		d.stopBase()
		close(d.quit)
		d.wg.Wait() // the scheduler and its give-backs: nothing sends on run now
		close(d.run)
		d.workers.Wait()
		if d.sched != nil {
			d.sched.stopRenewing() // the leases of handlers that ran past a hard stop, too
		}
	})
	return err
}

// Close stops the dispatcher at once: as Shutdown with a context that has
// already ended, except that it returns nil.
func (d *Dispatcher[T, R]) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	d.Shutdown(ctx)
	return nil
}

func (d *Dispatcher[T, R]) closeIntake() {
	// Wake submitters blocked on a full queue first: they hold intake for
	// reading, and taking it for writing waits for them.
	d.closingOnce.Do(func() { close(d.closing) })
	d.intake.Lock()
	d.closed = true
	d.sealed.Store(true)
	d.intake.Unlock()
	d.checkDrained()
}

// hardStop resolves every job that has not started with ErrClosed and
// cancels the contexts of running ones.
func (d *Dispatcher[T, R]) hardStop() {
	d.hardOnce.Do(func() {
		d.stopped.Store(true)
		d.stopBase()
		if d.sched != nil {
			d.sched.stop()
		} else {
			for {
				select {
				case j, ok := <-d.run:
					if !ok {
						break
					}
					if j.stateCAS(queued, done) {
						d.finish(j, *new(R), ErrClosed, outcomeCancelled)
					}
					continue
				default:
				}
				break
			}
		}
		for w := range d.crew {
			if j := d.crew[w].current.Load(); j != nil {
				j.endRun()
			}
		}
	})
}
