-- Schema version 3: learned limits (driver.Learn, and Decide with a
-- learned record), decided by decide_v3 in the statement and under the
-- locks that decide the rate, so that what a key learned and its
-- admissions are one atomic step. decide_v1, decide_v2 and the sweeps
-- stay as they were for processes of earlier versions (which decide a
-- learned limit at its ceiling, see docs/postgres.md); decide.sql and
-- leases.sql say how a batch is passed, locked and clocked, and all of
-- that holds here.
--
-- A key's buckets row keeps what it learned in learned, NULL for
-- nothing, else the seven numbers of driver.Learned in ticks: interval,
-- recover, drop, dropgen, until, pace, paceuntil. Its fresh_at is at
-- least until and paceuntil, so that a key is kept (by every version's
-- sweep) while what it learned holds. A record both of whose times have
-- passed changes no decision: the loop drops it at its next write of the
-- row, as Decide drops it, and the one statement keeps it until the row
-- goes.
--
-- decide_v3 takes decide_v2's arguments and two more, ft and ffl: per
-- request the limit's interval T and its floor's (driver.Terms.Interval
-- and Floor; a floor of 0 is a fixed limit), or both NULL when no
-- request of the batch is of a learned limit. A batch without learned
-- limits sends nothing more than decide_v2's, and a row without a
-- record costs a NULL column. @span is MaxDuration in ticks. A request
-- is:
--   op 1 admit:  as in v2; a learned limit's key that learned a slower
--                interval L is charged cost * L, at most span, and its
--                capacity is a, at most span less that charge
--   op 6 learn:  a the announced interval (0: none), b the throttled
--                admission's Gen (-1: not a throttle), c the time to
--                live, d the reset of remaining units (0: none), e the
--                units remaining; driver.Learn on a learned limit
-- Replies as v2's, and ivs: per request the interval its decision
-- applied (0 at the cap; a learn: the interval from now on), or NULL
-- when ffl is.

-- learned_v3 is driver.Learned.Effective for a limit of interval t and
-- floor fl, of a key whose record is r, at now. The cubic is computed in
-- float8 with each product rounded in Go's order, so that it finds Go's
-- ticks.
CREATE OR REPLACE FUNCTION @schema.learned_v3(t bigint, fl bigint, now bigint, r bigint[]) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
  v bigint := t;
  d float8;
  p float8;
BEGIN
  IF now < r[5] THEN
    IF r[2] = 0 THEN
      v := greatest(v, r[1]);
    ELSE
      d := (r[2] - greatest(now - r[3], 0))::float8 / r[2]::float8;
      p := d * d;
      p := p * d;
      p := p * 0.3::float8;
      v := greatest(v, ceil(r[1]::float8 / (1::float8 - p))::bigint);
    END IF;
  END IF;
  IF now < r[7] THEN
    v := greatest(v, r[6]);
  END IF;
  RETURN least(v, fl);
END $$;

-- recover_v3 is driver.RecoverTicks in microseconds: K for a drop from
-- the interval cur, the integer cube root of floor(7.5e14 / cur)
-- milliseconds cubed, by bisection, at least one millisecond. bigint
-- holds every number exactly.
CREATE OR REPLACE FUNCTION @schema.recover_v3(cur bigint) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
  n bigint := 0;
  k bigint := 0;
  c bigint;
  step bigint := 524288;
BEGIN
  IF cur <= 750000000000000 THEN
    n := 750000000000000000 / greatest(cur * 1000, 1);
  END IF;
  WHILE step > 0 LOOP
    c := k + step;
    IF c * c * c <= n THEN
      k := c;
    END IF;
    step := step / 2;
  END LOOP;
  RETURN greatest(k, 1) * 1000;
END $$;

CREATE OR REPLACE FUNCTION @schema.decide_v3(
  ukeys bytea[], kidx int[], ops int[], fa bigint[], fb bigint[], fc bigint[], fd bigint[], fe bigint[],
  qn int[], qw bigint[], qm bigint[], lids bytea[], lttls bigint[], lprev int[], ft bigint[], ffl bigint[],
  clock bigint, durable boolean,
  OUT allowed int[], OUT waits bigint[], OUT nows bigint[], OUT tats bigint[],
  OUT prevs bigint[], OUT gens bigint[], OUT freshs bigint[], OUT ivs bigint[])
LANGUAGE plpgsql
-- Rows by their keys, never by scans: see decide_v2.
SET enable_bitmapscan = off SET enable_seqscan = off AS $$
DECLARE
  -- Per key: the state, its time, its fresh moment, whether it must be
  -- written (1 update, 2 delete, 0 neither); the latest expiry of its
  -- held leases (0: none), and for keys with lease requests how many are
  -- held and how many of them expire at that latest time, so that a
  -- release needs to look for the next latest only when it releases the
  -- last of those.
  kt bigint[] := '{}'; kp bigint[] := '{}'; kg bigint[] := '{}'; kq text[] := '{}';
  kn bigint[] := '{}'; kf bigint[] := '{}'; kw int[] := '{}'; kfound boolean[];
  kh bigint[] := '{}'; kc bigint[] := '{}'; khn bigint[] := '{}'; kl boolean[];
  -- Per key: what it learned, as text (NULL: nothing).
  kr text[] := '{}';
  -- Per key with lease requests, the earliest expiry of its held leases,
  -- NULL until looked at or once they change.
  kmin bigint[];
  -- Per request with a lease: its lease's expiry as the batch found it
  -- (for the first request on it), and after the request (NULL: no row);
  -- whether that differs from the table's row; the next request on it.
  lpre bigint[]; lst bigint[]; lchg boolean[]; lnext int[];
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
  leased boolean := false;
  held boolean;
  atcap boolean;
  lx bigint;
  old bigint;
  hn bigint;
  nw bigint;
  learns boolean := ffl IS NOT NULL;
  records boolean;  -- learns, or a key of the batch holds a record
  span bigint := @span; -- MaxDuration in ticks, driver.Terms.Span
  rec bigint[];
  iv bigint;
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
  clock := greatest(clock, (SELECT w.t FROM @schema.swept w WHERE w.id = 0));
  IF fast AND learns THEN
    -- A learned limit's key that learned something is charged for the
    -- slower interval, as Decide charges it: its terms are found here,
    -- under the locks, so that the statement below stays decide_v2's.
    -- Every call plans that statement anew (the planner prefers custom
    -- plans for its arrays), and finding the terms in it tripled the
    -- planning: 14 ms a call against 4 on a loaded host.
    SELECT array_agg(CASE WHEN coalesce(b.fresh_at <= c.t, true) THEN NULL ELSE b.learned::text END ORDER BY u.o),
           array_agg(c.t ORDER BY u.o)
      INTO kr, kn
      FROM unnest(ukeys) WITH ORDINALITY u(k, o)
        LEFT JOIN @schema.buckets b ON b.key = u.k,
        LATERAL (SELECT greatest(clock, b.seen) AS t) c;
    ivs := ft;
    FOR i IN 1 .. n LOOP
      k := kidx[i];
      IF ffl[i] > 0 AND kr[k] IS NOT NULL THEN
        iv := @schema.learned_v3(ft[i], ffl[i], kn[k], kr[k]::bigint[]);
        IF iv <> ft[i] THEN
          fb[i] := least(fc[i]::numeric * iv, span)::bigint;
          fa[i] := least(fa[i], span - fb[i]);
        END IF;
        ivs[i] := iv;
      END IF;
    END LOOP;
  END IF;
  IF fast THEN
    -- Admissions without quotas, one per key: decide_v2's one statement,
    -- with a key's row kept while what it learned holds.
    WITH d AS (
      SELECT u.i, uk.k, u.lid, u.inflight, u.ttl, c.now, f.fr, s.hadq, s.tat0, s.paused0, s.held0, s.rec0,
             l.h, l.m, a.atcap, t.st, t.ok, b.fresh_at, b.key IS NOT NULL AS found,
             CASE WHEN t.ok THEN greatest(s.tat0, t.st) + u.charge ELSE s.tat0 END AS tat1,
             CASE WHEN t.ok THEN s.gen0 + 1 ELSE s.gen0 END AS gen1
      FROM unnest(kidx, fa, fb, fd, fe, lids, lttls) WITH ORDINALITY u(ki, cap, charge, maxwait, inflight, lid, ttl, i),
        LATERAL (SELECT ukeys[u.ki] AS k) uk
        LEFT JOIN @schema.buckets b ON b.key = uk.k,
        LATERAL (SELECT greatest(clock, b.seen) AS now) c,
        LATERAL (SELECT coalesce(b.fresh_at <= c.now, true) AS fr) f,
        LATERAL (SELECT CASE WHEN f.fr THEN 0 ELSE b.tat END AS tat0,
                        CASE WHEN f.fr THEN 0 ELSE b.paused END AS paused0,
                        CASE WHEN f.fr THEN 0 ELSE b.gen END AS gen0,
                        CASE WHEN f.fr OR b.held_until <= c.now THEN 0 ELSE b.held_until END AS held0,
                        CASE WHEN f.fr THEN NULL ELSE b.learned END AS rec0,
                        NOT f.fr AND b.quotas IS NOT NULL AS hadq) s,
        -- A capped request's key's held leases: how many, whether the
        -- request's own is one, the first and the last to expire.
        LATERAL (SELECT count(*) AS n, bool_or(x.id = u.lid) AS own, min(x.expires) AS m, max(x.expires) AS h
                 FROM @schema.leases x WHERE u.inflight > 0 AND x.key = uk.k AND x.expires > c.now) l,
        LATERAL (SELECT u.inflight > 0 AND NOT coalesce(l.own, false) AND l.n >= u.inflight AS atcap) a,
        LATERAL (SELECT greatest(c.now, s.tat0 - u.cap, s.paused0) AS st) t0,
        LATERAL (SELECT t0.st, NOT a.atcap AND t0.st - c.now <= u.maxwait AS ok) t
    ), w AS (
      SELECT d.*, h.held1, greatest(d.tat1, d.paused0, h.held1, d.rec0[5], d.rec0[7]) AS fresh1,
             d.ok OR d.hadq AND NOT d.atcap AS dirty
      FROM d, LATERAL (SELECT CASE WHEN d.inflight = 0 THEN d.held0
                                   WHEN d.ok THEN greatest(coalesce(d.h, 0), d.now + d.ttl)
                                   ELSE coalesce(d.h, 0) END AS held1) h
    ), lease AS (
      INSERT INTO @schema.leases AS x (key, id, expires)
        SELECT w.k, w.lid, w.now + w.ttl FROM w WHERE w.ok AND w.inflight > 0
        ON CONFLICT (key, id) DO UPDATE SET expires = greatest(x.expires, EXCLUDED.expires)
    ), upd AS (
      UPDATE @schema.buckets b
        SET tat = w.tat1, paused = w.paused0, gen = w.gen1, seen = w.now, fresh_at = w.fresh1, quotas = NULL,
            held_until = w.held1, learned = w.rec0
        FROM w WHERE b.key = w.k AND w.found AND w.dirty AND w.fresh1 > w.now
    ), ins AS (
      INSERT INTO @schema.buckets (key, tat, paused, gen, seen, fresh_at, quotas, held_until)
        SELECT w.k, w.tat1, w.paused0, w.gen1, w.now, w.fresh1, NULL, w.held1 FROM w
        WHERE NOT w.found AND w.dirty AND w.fresh1 > w.now
    ), del AS (
      DELETE FROM @schema.buckets b USING w
        WHERE b.key = w.k AND (w.dirty AND w.fresh1 <= w.now OR NOT w.dirty AND w.fr)
    )
    SELECT array_agg(CASE WHEN o.atcap THEN 2 ELSE o.ok::int END),
           array_agg(CASE WHEN o.atcap THEN o.m - o.now ELSE o.st - o.now END), array_agg(o.now),
           array_agg(CASE WHEN o.ok THEN o.tat1 ELSE 0 END), array_agg(CASE WHEN o.ok THEN o.tat0 ELSE 0 END),
           array_agg(CASE WHEN o.ok THEN o.gen1 ELSE 0 END),
           array_agg(CASE WHEN o.dirty AND o.fresh1 > o.now THEN o.fresh1 WHEN o.dirty OR o.fr THEN 0 ELSE o.fresh_at END)
      INTO allowed, waits, nows, tats, prevs, gens, freshs
      FROM (SELECT * FROM w ORDER BY w.i) o;
    IF learns THEN
      FOR i IN 1 .. n LOOP
        IF allowed[i] = 2 THEN
          ivs[i] := 0;
        END IF;
      END LOOP;
    END IF;
    RETURN;
  END IF;

  -- A state found fresh at its key's time is a fresh bucket, with no
  -- lease held. The rows come in the order of ukeys from the subquery.
  SELECT array_agg(CASE WHEN x.f THEN 0 ELSE x.tat END), array_agg(CASE WHEN x.f THEN 0 ELSE x.paused END),
         array_agg(CASE WHEN x.f THEN 0 ELSE x.gen END), array_agg(CASE WHEN x.f THEN NULL ELSE x.quotas::text END),
         array_agg(x.t), array_agg(CASE WHEN x.f THEN 0 ELSE x.fresh_at END), array_agg(x.found),
         array_agg(CASE WHEN x.f OR x.held_until <= x.t THEN 0 ELSE x.held_until END),
         array_agg(CASE WHEN x.f THEN NULL ELSE x.learned::text END), bool_or(NOT x.f AND x.learned IS NOT NULL)
    INTO kt, kp, kg, kq, kn, kf, kfound, kh, kr, records
    FROM (SELECT b.tat, b.paused, b.gen, b.quotas, b.fresh_at, b.held_until, b.learned, c.t,
        coalesce(b.fresh_at <= c.t, true) AS f, b.key IS NOT NULL AS found
      FROM unnest(ukeys) WITH ORDINALITY u(k, o)
        LEFT JOIN @schema.buckets b ON b.key = u.k,
        LATERAL (SELECT greatest(clock, b.seen) AS t) c
      ORDER BY u.o) x;
  kw := array_fill(0, ARRAY[cardinality(ukeys)]);
  allowed := array_fill(0, ARRAY[n]);
  waits := array_fill(0::bigint, ARRAY[n]);
  tats := waits; prevs := waits; gens := waits; nows := waits; freshs := waits;
  IF learns THEN
    ivs := waits;
  END IF;
  -- Without records (none held, none to learn) the loop does what
  -- decide_v2's does: rec stays NULL, kr unwritten.
  records := learns OR records;

  -- The keys with lease requests: their held leases, counted and their
  -- latest expiry read from the table, which decides the cap.
  kl := array_fill(false, ARRAY[cardinality(ukeys)]);
  FOR i IN 1 .. n LOOP
    IF lids[i] IS NOT NULL THEN
      kl[kidx[i]] := true;
      leased := true;
    END IF;
  END LOOP;
  IF leased THEN
    kc := array_fill(0::bigint, ARRAY[cardinality(ukeys)]);
    khn := kc;
    FOR k IN 1 .. cardinality(ukeys) LOOP
      IF kl[k] THEN
        kh[k] := 0;
      END IF;
    END LOOP;
    FOR k, cnt, lx, hn IN
      SELECT y.o, count(*), max(y.e), count(*) FILTER (WHERE y.e = y.m)
        FROM (SELECT u.o, x.expires AS e, max(x.expires) OVER (PARTITION BY u.o) AS m
              FROM unnest(ukeys, kn, kl) WITH ORDINALITY u(k, t, want, o)
                JOIN @schema.leases x ON x.key = u.k AND x.expires > u.t
              WHERE u.want) y
        GROUP BY y.o
    LOOP
      kc[k] := cnt; kh[k] := lx; khn[k] := hn;
    END LOOP;
    SELECT array_agg(l.e ORDER BY u.i) INTO lpre
      FROM unnest(kidx, lids, lprev) WITH ORDINALITY u(ki, id, pv, i)
        LEFT JOIN LATERAL (SELECT x.expires AS e FROM @schema.leases x
                           WHERE u.pv = 0 AND x.key = ukeys[u.ki] AND x.id = u.id) l ON true;
    kmin := array_fill(NULL::bigint, ARRAY[cardinality(ukeys)]);
    lst := array_fill(NULL::bigint, ARRAY[n]);
    lchg := array_fill(false, ARRAY[n]);
    lnext := array_fill(0, ARRAY[n]);
  END IF;

  FOR i IN 1 .. n LOOP
    k := kidx[i];
    tat := kt[k]; paused := kp[k]; gen := kg[k]; now := kn[k];
    q := CASE WHEN kq[k] IS NULL THEN NULL ELSE kq[k]::bigint[] END;
    IF records THEN
      rec := CASE WHEN kr[k] IS NULL THEN NULL ELSE kr[k]::bigint[] END;
    END IF;
    nq := qn[i];
    dirty := false;
    nows[i] := now;
    IF lids[i] IS NOT NULL THEN
      IF lprev[i] > 0 THEN
        old := lst[lprev[i]];
        lchg[i] := lchg[lprev[i]];
        lnext[lprev[i]] := i;
      ELSE
        old := lpre[i];
      END IF;
      lst[i] := old;
    END IF;

    IF ops[i] = 3 THEN
      paused := greatest(paused, now + fa[i]);
      dirty := true;

    ELSIF ops[i] = 6 THEN
      -- driver.Learn: what has expired is forgotten first.
      rec := coalesce(rec, '{0,0,0,0,0,0,0}');
      IF now >= rec[5] THEN
        rec[1] := 0; rec[2] := 0; rec[3] := 0; rec[4] := 0; rec[5] := 0;
      END IF;
      IF now >= rec[7] THEN
        rec[6] := 0; rec[7] := 0;
      END IF;
      IF fa[i] > 0 THEN
        rec[1] := fa[i]; rec[2] := 0; rec[3] := 0; rec[4] := 0; rec[5] := now + fc[i];
      ELSIF fb[i] >= 0 AND rec[2] <> 0 AND fb[i] <> 0 AND fb[i] <= rec[4] THEN
        rec[5] := now + fc[i]; -- the overload of the last drop: confirmed
      ELSIF fb[i] >= 0 THEN
        iv := @schema.learned_v3(ft[i], ffl[i], now, rec);
        rec[1] := iv; rec[2] := @schema.recover_v3(iv); rec[3] := now; rec[4] := gen; rec[5] := now + fc[i];
      END IF;
      IF fd[i] > 0 THEN
        IF fe[i] = 0 THEN
          paused := greatest(paused, now + fd[i]);
        ELSE
          rec[6] := (fd[i] - 1) / fe[i] + 1; rec[7] := now + fd[i];
        END IF;
      END IF;
      IF rec[5] = 0 AND rec[7] = 0 THEN
        rec := NULL;
        ivs[i] := ft[i];
      ELSE
        ivs[i] := @schema.learned_v3(ft[i], ffl[i], now, rec);
      END IF;
      dirty := true;

    ELSIF ops[i] = 4 THEN
      IF old > now THEN
        allowed[i] := 1;
        lx := now + lttls[i];
        IF lx > old THEN
          lst[i] := lx; lchg[i] := true; kmin[k] := NULL;
          -- Now the latest, or one more at the latest, or neither; old
          -- was not the latest unless lx is.
          IF lx > kh[k] THEN
            kh[k] := lx; khn[k] := 1;
          ELSIF lx = kh[k] THEN
            khn[k] := khn[k] + 1;
          END IF;
          dirty := true;
        END IF;
      END IF;

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

    ELSIF ops[i] = 1 THEN
      -- The cap first: a holder asking again with a lease it holds is
      -- not counted twice; at the cap nothing is charged.
      atcap := false;
      held := false;
      IF fe[i] > 0 THEN
        held := coalesce(old > now, false);
        IF NOT held AND kc[k] >= fe[i] THEN
          IF kmin[k] IS NULL THEN
            PERFORM @schema.flush_leases_v2(ukeys, kidx, lids, lst, lchg, lnext, i, k);
            FOR j IN 1 .. i LOOP
              IF kidx[j] = k THEN
                lchg[j] := false;
              END IF;
            END LOOP;
            SELECT coalesce(min(x.expires), now) INTO lx FROM @schema.leases x WHERE x.key = ukeys[k] AND x.expires > now;
            kmin[k] := lx;
          END IF;
          allowed[i] := 2;
          waits[i] := kmin[k] - now;
          atcap := true;
        END IF;
      END IF;

      IF NOT atcap THEN
        cost := fc[i];
        IF learns THEN
          -- A learned limit's key that learned something: Decide's
          -- slower interval, its charge and capacity in fb[i] and fa[i];
          -- or the record is dropped once it expired.
          iv := ft[i];
          IF ffl[i] > 0 AND rec IS NOT NULL THEN
            IF now >= rec[5] AND now >= rec[7] THEN
              rec := NULL;
            ELSE
              iv := @schema.learned_v3(ft[i], ffl[i], now, rec);
              IF iv <> ft[i] THEN
                fb[i] := least(cost::numeric * iv, span)::bigint;
                fa[i] := least(fa[i], span - fb[i]);
              END IF;
            END IF;
          END IF;
          ivs[i] := iv;
        END IF;
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
          IF fe[i] > 0 THEN
            lx := now + lttls[i];
            nw := greatest(old, lx);
            IF old IS DISTINCT FROM nw THEN
              lst[i] := nw; lchg[i] := true; kmin[k] := NULL;
            END IF;
            IF NOT held THEN
              kc[k] := kc[k] + 1;
            END IF;
            -- A lease held already is extended, never shortened: as a
            -- renewal.
            IF NOT held OR lx > old THEN
              IF lx > kh[k] THEN
                kh[k] := lx; khn[k] := 1;
              ELSIF lx = kh[k] THEN
                khn[k] := khn[k] + 1;
              END IF;
            END IF;
          END IF;
        END IF;
      END IF;
    END IF;

    -- A release, or a refund's: its lease goes, held or expired.
    IF (ops[i] = 2 OR ops[i] = 5) AND lids[i] IS NOT NULL AND old IS NOT NULL THEN
      lst[i] := NULL; lchg[i] := true;
      IF ops[i] = 5 THEN
        allowed[i] := 1;
      END IF;
      IF old > now THEN
        kc[k] := kc[k] - 1;
        kmin[k] := NULL;
        dirty := true;
        IF old = kh[k] THEN
          khn[k] := khn[k] - 1;
        END IF;
        IF kc[k] = 0 THEN
          kh[k] := 0; khn[k] := 0;
        ELSIF khn[k] = 0 THEN
          PERFORM @schema.flush_leases_v2(ukeys, kidx, lids, lst, lchg, lnext, i, k);
          FOR j IN 1 .. i LOOP
            IF kidx[j] = k THEN
              lchg[j] := false;
            END IF;
          END LOOP;
          SELECT coalesce(max(y.e), 0), count(*) FILTER (WHERE y.e = y.m) INTO lx, hn
            FROM (SELECT x.expires AS e, max(x.expires) OVER () AS m FROM @schema.leases x
                  WHERE x.key = ukeys[k] AND x.expires > now) y;
          kh[k] := lx; khn[k] := hn;
        END IF;
      END IF;
    END IF;

    qo := qo + nq;
    IF dirty THEN
      IF q IS NULL THEN
        fresh := greatest(tat, paused, kh[k]);
      ELSE
        fresh := greatest(@schema.freshat(tat, paused, q), kh[k]);
      END IF;
      IF records THEN
        fresh := greatest(fresh, rec[5], rec[7]);
        kr[k] := CASE WHEN fresh <= now THEN NULL ELSE rec::text END;
      END IF;
      IF fresh <= now THEN
        tat := 0; paused := 0; gen := 0; q := NULL; fresh := 0;
      END IF;
      kt[k] := tat; kp[k] := paused; kg[k] := gen; kq[k] := q::text; kf[k] := fresh;
      kw[k] := 1;
    END IF;
    freshs[i] := kf[k];
  END LOOP;

  IF leased THEN
    PERFORM @schema.flush_leases_v2(ukeys, kidx, lids, lst, lchg, lnext, n, 0);
  END IF;
  FOR k IN 1 .. cardinality(ukeys) LOOP
    IF kf[k] = 0 THEN
      kw[k] := 2; -- fresh: the row goes, if there is one
      deletes := true;
    ELSIF kw[k] = 1 THEN
      updates := true;
    END IF;
  END LOOP;
  IF updates THEN
    UPDATE @schema.buckets b
      SET tat = u.tat, paused = u.paused, gen = u.gen, seen = u.seen, fresh_at = u.fresh, quotas = u.q::bigint[],
          held_until = u.held, learned = u.r::bigint[]
      FROM unnest(ukeys, kt, kp, kg, kn, kf, kq, kw, kfound, kh, kr)
        AS u(key, tat, paused, gen, seen, fresh, q, w, found, held, r)
      WHERE b.key = u.key AND u.w = 1 AND u.found;
    INSERT INTO @schema.buckets (key, tat, paused, gen, seen, fresh_at, quotas, held_until, learned)
      SELECT u.key, u.tat, u.paused, u.gen, u.seen, u.fresh, u.q::bigint[], u.held, u.r::bigint[]
      FROM unnest(ukeys, kt, kp, kg, kn, kf, kq, kw, kfound, kh, kr)
        AS u(key, tat, paused, gen, seen, fresh, q, w, found, held, r)
      WHERE u.w = 1 AND NOT u.found;
  END IF;
  IF deletes THEN
    DELETE FROM @schema.buckets b USING unnest(ukeys, kw) AS u(key, w)
      WHERE b.key = u.key AND u.w = 2;
  END IF;
END $$;

