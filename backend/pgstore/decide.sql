-- The mathematics of bucket/driver (Decide, Refund, Pause, FreshAt), run
-- inside PostgreSQL on a batch of requests in one statement, in integer
-- microseconds of the server's clock (clock_timestamp()). @schema is
-- replaced by the store's schema, quoted.
--
-- The batch's keys come distinct in ukeys, and request i is on
-- ukeys[kidx[i]]. A request is op (1 admit, 2 refund, 3 pause), five
-- numbers a..e and qn[i] quota pairs, which follow those of the requests
-- before it in qw and qm:
--   op 1 admit:  a capacity, b charge (driver.Terms), c cost, d maxWait;
--                pairs (window, max) of the limit's quotas
--   op 2 refund: a the booking's TAT, b its previous TAT, c its Gen,
--                d its start, e its cost; windows of the limit's quotas
--   op 3 pause:  a the duration
-- clock, if not NULL, is the time to decide at instead of the server's
-- (the parity test's). Unless durable, the transaction commits without
-- waiting for its WAL to reach the disk (synchronous_commit off, for this
-- transaction only): a crash of the server may lose the last moments'
-- admissions, and a flush costs more than the rest of a batch.
--
-- Concurrent batches must not decide a key at once, and must not wait on
-- each other in convoys. A batch of more than @small distinct keys is
-- decided alone: it takes the schema's advisory lock (@lock, a number the
-- store derives from the schema's name) exclusively for its transaction.
-- Smaller ones take it shared, and run at once, each first taking an
-- advisory lock per key (@keyns and a hash of the key) in the order of
-- the hashes, so that they cannot deadlock; a key without a row is locked
-- as well as one with, and no row is written to be locked. (Row locks
-- taken with INSERT ... ON CONFLICT DO UPDATE ... WHERE false, in key
-- order, did the same, slower: 12,000-14,000 admissions/s in batches of 8
-- against 15,000-17,000.) Locks per key alone let batches of disjoint
-- keys run at once too, but the batches of
-- Dispatchers in several processes nearly always share some keys, and
-- their lock waits formed convoys: four processes admitted a fifth of
-- what the exclusive lock lets them (docs/postgres.md); and one lock for
-- every batch made lone admissions from many callers wait in line. The
-- sweep takes the lock exclusively. The clock is read once the locks are
-- held.
--
-- A row holds tat, paused and gen as in driver.State; seen, the latest
-- time it was decided at, so that a key's clock never runs backwards (the
-- server's may step back); fresh_at, driver.FreshAt of the state; quotas,
-- NULL or per quota window, n, then n pairs (slot index, count), slots
-- ascending. A key without a row, or whose state is found fresh, has a
-- fresh bucket; a row whose state is fresh after the batch is deleted.
--
-- Replies: per request, in order, allowed (0 or 1), wait, now, tat, prev,
-- gen and fresh (driver.FreshAt after the request, 0 if fresh); refunds
-- and pauses fill in only now and fresh.

CREATE OR REPLACE FUNCTION @schema.floordiv(x bigint, y bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT x / y - (x % y < 0)::int $$;

-- freshat is driver.FreshAt.
CREATE OR REPLACE FUNCTION @schema.freshat(tat bigint, paused bigint, q bigint[]) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
  fresh bigint := greatest(tat, paused);
  p int := 1;
  n bigint;
BEGIN
  WHILE p <= coalesce(cardinality(q), 0) LOOP
    n := q[p + 1];
    IF n > 0 THEN
      fresh := greatest(fresh, (q[p + 2 * n] + 1) * ((q[p] - 1) / 100 + 1) + q[p]);
    END IF;
    p := p + 2 + 2 * n;
  END LOOP;
  RETURN fresh;
END $$;

CREATE OR REPLACE FUNCTION @schema.decide_v1(
  ukeys bytea[], kidx int[], ops int[], fa bigint[], fb bigint[], fc bigint[], fd bigint[], fe bigint[],
  qn int[], qw bigint[], qm bigint[], clock bigint, durable boolean,
  OUT allowed int[], OUT waits bigint[], OUT nows bigint[], OUT tats bigint[],
  OUT prevs bigint[], OUT gens bigint[], OUT freshs bigint[])
LANGUAGE plpgsql AS $$
DECLARE
  -- Per key: the state, its time, its fresh moment, whether it must be
  -- written (1 update, 2 delete, 0 neither).
  kt bigint[] := '{}'; kp bigint[] := '{}'; kg bigint[] := '{}'; kq text[] := '{}';
  kn bigint[] := '{}'; kf bigint[] := '{}'; kw int[] := '{}'; kfound boolean[];
  k int := 0;
  n int;
  i int;
  j int;
  s int;
  p int;
  qo int := 0;     -- the request's quota pairs start after qo
  nq int;
  tat bigint; paused bigint; gen bigint; q bigint[]; now bigint; fresh bigint; dirty boolean;
  st bigint; t bigint; w bigint; sw bigint; lo bigint; cnt bigint; idx bigint; cost bigint;
  used numeric;
  reshaped boolean;
  nqa bigint[];
  updates boolean := false;
  deletes boolean := false;
  fast boolean;
BEGIN
  IF NOT durable THEN
    PERFORM set_config('synchronous_commit', 'off', true);
  END IF;
  n := coalesce(cardinality(kidx), 0);
  fast := cardinality(ukeys) = n AND 1 = ALL (ops) AND 0 = ALL (qn);
  IF cardinality(ukeys) > @small THEN
    PERFORM pg_advisory_xact_lock(@lock);
  ELSE
    PERFORM pg_advisory_xact_lock_shared(@lock);
    PERFORM pg_advisory_xact_lock(@keyns, x.h)
      FROM (SELECT DISTINCT hashtext(u.k::text) AS h FROM unnest(ukeys) u(k) ORDER BY 1) x;
  END IF;
  IF clock IS NULL THEN
    clock := floor(extract(epoch FROM clock_timestamp()) * 1000000);
  END IF;
  -- Never before the sweep: it deleted rows fresh at its time, which an
  -- earlier time (a server clock stepped back) would not find fresh; a
  -- key without a row would then start over with a fresh bucket.
  clock := greatest(clock, (SELECT w.t FROM @schema.swept w WHERE w.id = 0));
  IF fast THEN
    -- Admissions without quotas, one per key: decided by one statement,
    -- the lines of the loop below for this case. A stored quota state is
    -- dropped, as the loop drops it when the limit has no quotas.
    WITH d AS (
      SELECT u.i, uk.k, c.now, f.fr, s.hadq, s.tat0, s.paused0, t.st, t.ok, b.fresh_at, b.key IS NOT NULL AS found,
             CASE WHEN t.ok THEN greatest(s.tat0, t.st) + u.charge ELSE s.tat0 END AS tat1,
             CASE WHEN t.ok THEN s.gen0 + 1 ELSE s.gen0 END AS gen1
      FROM unnest(kidx, fa, fb, fd) WITH ORDINALITY u(ki, cap, charge, maxwait, i),
        LATERAL (SELECT ukeys[u.ki] AS k) uk
        LEFT JOIN @schema.buckets b ON b.key = uk.k,
        LATERAL (SELECT greatest(clock, b.seen) AS now) c,
        LATERAL (SELECT coalesce(b.fresh_at <= c.now, true) AS fr) f,
        LATERAL (SELECT CASE WHEN f.fr THEN 0 ELSE b.tat END AS tat0,
                        CASE WHEN f.fr THEN 0 ELSE b.paused END AS paused0,
                        CASE WHEN f.fr THEN 0 ELSE b.gen END AS gen0,
                        NOT f.fr AND b.quotas IS NOT NULL AS hadq) s,
        LATERAL (SELECT greatest(c.now, s.tat0 - u.cap, s.paused0) AS st) t0,
        LATERAL (SELECT t0.st, t0.st - c.now <= u.maxwait AS ok) t
    ), w AS (
      SELECT d.*, greatest(d.tat1, d.paused0) AS fresh1, d.ok OR d.hadq AS dirty FROM d
    ), upd AS (
      UPDATE @schema.buckets b
        SET tat = w.tat1, paused = w.paused0, gen = w.gen1, seen = w.now, fresh_at = w.fresh1, quotas = NULL
        FROM w WHERE b.key = w.k AND w.found AND w.dirty AND w.fresh1 > w.now
    ), ins AS (
      INSERT INTO @schema.buckets (key, tat, paused, gen, seen, fresh_at, quotas)
        SELECT w.k, w.tat1, w.paused0, w.gen1, w.now, w.fresh1, NULL FROM w
        WHERE NOT w.found AND w.dirty AND w.fresh1 > w.now
    ), del AS (
      DELETE FROM @schema.buckets b USING w
        WHERE b.key = w.k AND (w.dirty AND w.fresh1 <= w.now OR NOT w.dirty AND w.fr)
    )
    SELECT array_agg(o.ok::int), array_agg(o.st - o.now), array_agg(o.now),
           array_agg(CASE WHEN o.ok THEN o.tat1 ELSE 0 END), array_agg(CASE WHEN o.ok THEN o.tat0 ELSE 0 END),
           array_agg(CASE WHEN o.ok THEN o.gen1 ELSE 0 END),
           array_agg(CASE WHEN o.dirty AND o.fresh1 > o.now THEN o.fresh1 WHEN o.dirty OR o.fr THEN 0 ELSE o.fresh_at END)
      INTO allowed, waits, nows, tats, prevs, gens, freshs
      FROM (SELECT * FROM w ORDER BY w.i) o;
    RETURN;
  END IF;

  -- A state found fresh at its key's time is a fresh bucket. The rows
  -- come in the order of ukeys from the subquery.
  SELECT array_agg(CASE WHEN x.f THEN 0 ELSE x.tat END), array_agg(CASE WHEN x.f THEN 0 ELSE x.paused END),
         array_agg(CASE WHEN x.f THEN 0 ELSE x.gen END), array_agg(CASE WHEN x.f THEN NULL ELSE x.quotas::text END),
         array_agg(x.t), array_agg(CASE WHEN x.f THEN 0 ELSE x.fresh_at END), array_agg(x.found)
    INTO kt, kp, kg, kq, kn, kf, kfound
    FROM (SELECT b.tat, b.paused, b.gen, b.quotas, b.fresh_at, c.t, coalesce(b.fresh_at <= c.t, true) AS f,
        b.key IS NOT NULL AS found
      FROM unnest(ukeys) WITH ORDINALITY u(k, o)
        LEFT JOIN @schema.buckets b ON b.key = u.k,
        LATERAL (SELECT greatest(clock, b.seen) AS t) c
      ORDER BY u.o) x;
  kw := array_fill(0, ARRAY[cardinality(ukeys)]);
  allowed := array_fill(0, ARRAY[n]);
  waits := array_fill(0::bigint, ARRAY[n]);
  tats := waits; prevs := waits; gens := waits; nows := waits; freshs := waits;

  FOR i IN 1 .. n LOOP
    k := kidx[i];
    tat := kt[k]; paused := kp[k]; gen := kg[k]; now := kn[k];
    q := CASE WHEN kq[k] IS NULL THEN NULL ELSE kq[k]::bigint[] END;
    nq := qn[i];
    dirty := false;
    nows[i] := now;

    IF ops[i] = 3 THEN
      paused := greatest(paused, now + fa[i]);
      dirty := true;

    ELSIF ops[i] = 2 THEN
      -- Only the latest admission, with nothing refunded since.
      IF tat = fa[i] AND gen = fc[i] THEN
        tat := fb[i];
        gen := gen + 1;
        dirty := true;
        FOR j IN 1 .. nq LOOP
          w := qw[qo + j];
          p := 1;
          WHILE p <= coalesce(cardinality(q), 0) LOOP
            cnt := q[p + 1];
            IF q[p] = w THEN
              idx := @schema.floordiv(fd[i], (w - 1) / 100 + 1);
              FOR s IN 1 .. cnt LOOP
                IF q[p + 2 * s] = idx THEN
                  q[p + 2 * s + 1] := q[p + 2 * s + 1] - least(fe[i], q[p + 2 * s + 1]);
                  IF q[p + 2 * s + 1] = 0 THEN
                    q := q[1 : p] || (cnt - 1) || q[p + 2 : p + 2 * s - 1] || q[p + 2 * s + 2 :];
                    cnt := cnt - 1;
                  END IF;
                  EXIT;
                END IF;
              END LOOP;
            END IF;
            p := p + 2 + 2 * cnt;
          END LOOP;
        END LOOP;
      END IF;

    ELSE
      cost := fc[i];
      st := greatest(now, tat - fa[i], paused);
      IF nq > 0 OR q IS NOT NULL THEN
        -- Line the stored quotas up with the limit's, by window.
        reshaped := false;
        p := 1;
        j := 0;
        WHILE p <= coalesce(cardinality(q), 0) LOOP
          j := j + 1;
          IF j > nq OR q[p] <> qw[qo + j] THEN
            reshaped := true;
          END IF;
          p := p + 2 + 2 * q[p + 1];
        END LOOP;
        IF j <> nq THEN
          reshaped := true;
        END IF;
        IF reshaped THEN
          nqa := '{}';
          FOR j IN 1 .. nq LOOP
            w := qw[qo + j];
            nqa := nqa || w;
            p := 1;
            WHILE p <= coalesce(cardinality(q), 0) AND q[p] <> w LOOP
              p := p + 2 + 2 * q[p + 1];
            END LOOP;
            IF p <= coalesce(cardinality(q), 0) THEN
              nqa := nqa || q[p + 1 : p + 1 + 2 * q[p + 1]];
            ELSE
              nqa := nqa || 0::bigint;
            END IF;
          END LOOP;
          q := CASE WHEN nq = 0 THEN NULL ELSE nqa END;
          dirty := true;
        END IF;
        p := 1;
        FOR j IN 1 .. nq LOOP
          w := q[p];
          cnt := q[p + 1];
          sw := (w - 1) / 100 + 1;
          -- Prune slots wholly outside every window still to be asked about.
          lo := @schema.floordiv(now - w, sw);
          s := 0;
          WHILE s < cnt AND q[p + 2 + 2 * s] < lo LOOP
            s := s + 1;
          END LOOP;
          IF s > 0 THEN
            q := q[1 : p] || (cnt - s) || q[p + 2 + 2 * s :];
            cnt := cnt - s;
          END IF;
          -- The first time >= the start at which cost more units fit.
          t := st;
          lo := @schema.floordiv(t - w, sw);
          used := 0;
          FOR s IN 1 .. cnt LOOP
            IF q[p + 2 * s] >= lo THEN
              used := used + q[p + 2 * s + 1];
            END IF;
          END LOOP;
          FOR s IN 1 .. cnt LOOP
            EXIT WHEN used + cost <= qm[qo + j];
            IF q[p + 2 * s] >= lo THEN
              used := used - q[p + 2 * s + 1];
              t := (q[p + 2 * s] + 1) * sw + w;
            END IF;
          END LOOP;
          st := greatest(st, t);
          p := p + 2 + 2 * cnt;
        END LOOP;
      END IF;

      waits[i] := st - now;
      IF st - now <= fd[i] THEN
        allowed[i] := 1;
        prevs[i] := tat;
        tat := greatest(tat, st) + fb[i];
        gen := gen + 1;
        tats[i] := tat;
        gens[i] := gen;
        dirty := true;
        p := 1;
        FOR j IN 1 .. nq LOOP
          w := q[p];
          cnt := q[p + 1];
          idx := @schema.floordiv(st, (w - 1) / 100 + 1);
          s := cnt;
          WHILE s > 0 AND q[p + 2 * s] > idx LOOP
            s := s - 1;
          END LOOP;
          IF s > 0 AND q[p + 2 * s] = idx THEN
            q[p + 2 * s + 1] := q[p + 2 * s + 1] + cost;
          ELSE
            q := q[1 : p] || (cnt + 1) || q[p + 2 : p + 1 + 2 * s] || ARRAY[idx, cost] || q[p + 2 + 2 * s :];
            cnt := cnt + 1;
          END IF;
          p := p + 2 + 2 * cnt;
        END LOOP;
      END IF;
    END IF;

    qo := qo + nq;
    IF dirty THEN
      IF q IS NULL THEN
        fresh := greatest(tat, paused);
      ELSE
        fresh := @schema.freshat(tat, paused, q);
      END IF;
      IF fresh <= now THEN
        tat := 0; paused := 0; gen := 0; q := NULL; fresh := 0;
      END IF;
      kt[k] := tat; kp[k] := paused; kg[k] := gen; kq[k] := q::text; kf[k] := fresh;
      kw[k] := 1;
    END IF;
    freshs[i] := kf[k];
  END LOOP;

  FOR k IN 1 .. cardinality(ukeys) LOOP
    IF kf[k] = 0 THEN
      kw[k] := 2; -- fresh: the row goes, if there is one
      deletes := true;
    ELSIF kw[k] = 1 THEN
      updates := true;
    END IF;
  END LOOP;
  -- Rows the batch found are updated (a HOT update: no indexed column
  -- changes), the others inserted; the locks held say which is which.
  IF updates THEN
    UPDATE @schema.buckets b
      SET tat = u.tat, paused = u.paused, gen = u.gen, seen = u.seen, fresh_at = u.fresh, quotas = u.q::bigint[]
      FROM unnest(ukeys, kt, kp, kg, kn, kf, kq, kw, kfound) AS u(key, tat, paused, gen, seen, fresh, q, w, found)
      WHERE b.key = u.key AND u.w = 1 AND u.found;
    INSERT INTO @schema.buckets (key, tat, paused, gen, seen, fresh_at, quotas)
      SELECT u.key, u.tat, u.paused, u.gen, u.seen, u.fresh, u.q::bigint[]
      FROM unnest(ukeys, kt, kp, kg, kn, kf, kq, kw, kfound) AS u(key, tat, paused, gen, seen, fresh, q, w, found)
      WHERE u.w = 1 AND NOT u.found;
  END IF;
  IF deletes THEN
    DELETE FROM @schema.buckets b USING unnest(ukeys, kw) AS u(key, w)
      WHERE b.key = u.key AND u.w = 2;
  END IF;
END $$;

-- sweep_v1 deletes up to lim rows whose buckets are fresh, and returns
-- how many. It looks for them without a lock (a scan of the table, which
-- admissions need not wait for), then deletes those still fresh under the
-- schema's lock, by key.
CREATE OR REPLACE FUNCTION @schema.sweep_v1(lim int) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
  doomed bytea[];
  n bigint;
  now bigint;
BEGIN
  SELECT array_agg(b.key) INTO doomed FROM (
    SELECT key FROM @schema.buckets
    WHERE fresh_at <= floor(extract(epoch FROM clock_timestamp()) * 1000000) LIMIT lim) b;
  IF doomed IS NULL THEN
    RETURN 0;
  END IF;
  PERFORM pg_advisory_xact_lock(@lock);
  now := floor(extract(epoch FROM clock_timestamp()) * 1000000);
  DELETE FROM @schema.buckets WHERE key = ANY (doomed) AND fresh_at <= now;
  GET DIAGNOSTICS n = ROW_COUNT;
  IF n > 0 THEN -- decisions from now on are at least at now (see decide_v1)
    UPDATE @schema.swept w SET t = greatest(w.t, now) WHERE w.id = 0;
  END IF;
  RETURN n;
END $$;
