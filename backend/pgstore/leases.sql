-- Schema version 2: leases for an inflight cap (driver.DecideLeased),
-- decided by decide_v2 in the statement and under the locks that decide
-- the rate, so that cap and rate are one atomic step. decide_v1 and
-- sweep_v1 stay as they were for processes of version 1, which refuse
-- capped requests before sending them; decide.sql says how a batch is
-- passed, locked and clocked, and all of that holds here.
--
-- leases holds one row per lease taken and not released: its key, its
-- ID and the time it expires, in the key's microseconds. A lease counts
-- while expires > now; expired rows are deleted by the sweep. A key's
-- buckets row keeps held_until, the latest expiry of its leases that
-- were held at its last write, and its fresh_at is at least that: so a
-- key is kept while a lease of it is held (by decide_v1 and sweep_v1
-- too), and forgotten once its bucket is fresh and its leases expired
-- or released.
--
-- decide_v2 takes decide_v1's arguments and three more per request:
-- lids, the lease ID (NULL for none); lttls, a time to live in ticks; and
-- lprev, the request before it in the batch on the same key and lease
-- (0: none), which the caller finds:
--   op 1 admit:   as in v1, and e the limit's inflight cap (0: none);
--                 with a cap, lids[i] is the lease to take, held
--                 lttls[i] from the decision
--   op 2 refund:  as in v1; with lids[i], its lease is released too,
--                 whether or not the rate is given back
--   op 4 renew:   extends lease lids[i], if held, to now + lttls[i];
--                 never shortens it
--   op 5 release: releases lease lids[i]
-- Replies as v1's, but allowed is 0 refused, 1 admitted (renew: held
-- and renewed; release: released), 2 refused at the cap, whose wait is
-- then until the first held lease expires.
--
-- A batch reads its leases at its start (the count, the latest expiry
-- and the requests' own leases, a statement each) and writes them at its
-- end (an insert and a delete): a lease row written per request cost
-- 20 us of the 77 us a capped admission took in a batch of 128 keys.
-- Between, a request finds its lease as the request before it on the
-- same lease left it (lprev), and a look at all of a key's leases (when
-- to wait for at the cap; the next latest expiry) first writes what the
-- batch changed of that key's (flush_leases_v2).

-- flush_leases_v2 writes what requests 1 to upto of a batch of decide_v2
-- changed of the leases of key k (of all keys if k is 0): each lease's
-- row as the last of those requests on it left it.
CREATE OR REPLACE FUNCTION @schema.flush_leases_v2(ukeys bytea[], kidx int[], lids bytea[], lst bigint[],
  lchg boolean[], lnext int[], upto int, k int) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM @schema.leases x
    USING unnest(kidx, lids, lst, lchg, lnext) WITH ORDINALITY u(ki, id, e, chg, nx, j)
    WHERE u.j <= upto AND u.chg AND u.nx = 0 AND u.e IS NULL AND (k = 0 OR u.ki = k)
      AND x.key = ukeys[u.ki] AND x.id = u.id;
  INSERT INTO @schema.leases AS x (key, id, expires)
    SELECT ukeys[u.ki], u.id, u.e FROM unnest(kidx, lids, lst, lchg, lnext) WITH ORDINALITY u(ki, id, e, chg, nx, j)
    WHERE u.j <= upto AND u.chg AND u.nx = 0 AND u.e IS NOT NULL AND (k = 0 OR u.ki = k)
    ON CONFLICT (key, id) DO UPDATE SET expires = EXCLUDED.expires;
END $$;

CREATE OR REPLACE FUNCTION @schema.decide_v2(
  ukeys bytea[], kidx int[], ops int[], fa bigint[], fb bigint[], fc bigint[], fd bigint[], fe bigint[],
  qn int[], qw bigint[], qm bigint[], lids bytea[], lttls bigint[], lprev int[], clock bigint, durable boolean,
  OUT allowed int[], OUT waits bigint[], OUT nows bigint[], OUT tats bigint[],
  OUT prevs bigint[], OUT gens bigint[], OUT freshs bigint[])
LANGUAGE plpgsql
-- Every statement reads or writes the rows of the batch's keys by their
-- primary keys; the planner, which sees a batch's arrays as 10 or 1,000
-- rows and a table of churned leases as small, chose scans of the whole
-- leases table (10.6 ms a batch of 128 capped admissions and releases
-- on 1,000 keys) and bitmap scans of a key's leases, which never mark
-- the index entries of deleted leases dead: each scan then visited every
-- lease released since the last vacuum (12,800 entries after 100
-- batches of 128 on one key, and 100 ms a batch). Plain index scans mark
-- them, and skip them.
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
  IF fast THEN
    -- Admissions without quotas, one per key: decide_v1's one statement,
    -- with the cap decided first for those that have one, and a key's row
    -- kept while its leases are held.
    WITH d AS (
      SELECT u.i, uk.k, u.lid, u.inflight, u.ttl, c.now, f.fr, s.hadq, s.tat0, s.paused0, s.held0,
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
                        NOT f.fr AND b.quotas IS NOT NULL AS hadq) s,
        -- A capped request's key's held leases: how many, whether the
        -- request's own is one, the first and the last to expire.
        LATERAL (SELECT count(*) AS n, bool_or(x.id = u.lid) AS own, min(x.expires) AS m, max(x.expires) AS h
                 FROM @schema.leases x WHERE u.inflight > 0 AND x.key = uk.k AND x.expires > c.now) l,
        LATERAL (SELECT u.inflight > 0 AND NOT coalesce(l.own, false) AND l.n >= u.inflight AS atcap) a,
        LATERAL (SELECT greatest(c.now, s.tat0 - u.cap, s.paused0) AS st) t0,
        LATERAL (SELECT t0.st, NOT a.atcap AND t0.st - c.now <= u.maxwait AS ok) t
    ), w AS (
      SELECT d.*, h.held1, greatest(d.tat1, d.paused0, h.held1) AS fresh1, d.ok OR d.hadq AND NOT d.atcap AS dirty
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
            held_until = w.held1
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
    RETURN;
  END IF;

  -- A state found fresh at its key's time is a fresh bucket, with no
  -- lease held. The rows come in the order of ukeys from the subquery.
  SELECT array_agg(CASE WHEN x.f THEN 0 ELSE x.tat END), array_agg(CASE WHEN x.f THEN 0 ELSE x.paused END),
         array_agg(CASE WHEN x.f THEN 0 ELSE x.gen END), array_agg(CASE WHEN x.f THEN NULL ELSE x.quotas::text END),
         array_agg(x.t), array_agg(CASE WHEN x.f THEN 0 ELSE x.fresh_at END), array_agg(x.found),
         array_agg(CASE WHEN x.f OR x.held_until <= x.t THEN 0 ELSE x.held_until END)
    INTO kt, kp, kg, kq, kn, kf, kfound, kh
    FROM (SELECT b.tat, b.paused, b.gen, b.quotas, b.fresh_at, b.held_until, c.t,
        coalesce(b.fresh_at <= c.t, true) AS f, b.key IS NOT NULL AS found
      FROM unnest(ukeys) WITH ORDINALITY u(k, o)
        LEFT JOIN @schema.buckets b ON b.key = u.k,
        LATERAL (SELECT greatest(clock, b.seen) AS t) c
      ORDER BY u.o) x;
  kw := array_fill(0, ARRAY[cardinality(ukeys)]);
  allowed := array_fill(0, ARRAY[n]);
  waits := array_fill(0::bigint, ARRAY[n]);
  tats := waits; prevs := waits; gens := waits; nows := waits; freshs := waits;

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
          held_until = u.held
      FROM unnest(ukeys, kt, kp, kg, kn, kf, kq, kw, kfound, kh) AS u(key, tat, paused, gen, seen, fresh, q, w, found, held)
      WHERE b.key = u.key AND u.w = 1 AND u.found;
    INSERT INTO @schema.buckets (key, tat, paused, gen, seen, fresh_at, quotas, held_until)
      SELECT u.key, u.tat, u.paused, u.gen, u.seen, u.fresh, u.q::bigint[], u.held
      FROM unnest(ukeys, kt, kp, kg, kn, kf, kq, kw, kfound, kh) AS u(key, tat, paused, gen, seen, fresh, q, w, found, held)
      WHERE u.w = 1 AND NOT u.found;
  END IF;
  IF deletes THEN
    DELETE FROM @schema.buckets b USING unnest(ukeys, kw) AS u(key, w)
      WHERE b.key = u.key AND u.w = 2;
  END IF;
END $$;

-- sweep_v2 deletes up to lim lease rows that have expired and up to lim
-- rows whose buckets are fresh, and returns how many rows it deleted. It
-- looks for them without a lock, then deletes those still expired or
-- fresh under the schema's lock; a bucket is kept while a lease of its
-- key is held, even if a process of version 1 wrote its row.
CREATE OR REPLACE FUNCTION @schema.sweep_v2(lim int) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
  doomed bytea[];
  lk bytea[];
  li bytea[];
  n bigint := 0;
  m bigint := 0;
  now bigint;
BEGIN
  now := floor(extract(epoch FROM clock_timestamp()) * 1000000);
  SELECT array_agg(b.key) INTO doomed FROM (
    SELECT key FROM @schema.buckets WHERE fresh_at <= now LIMIT lim) b;
  SELECT array_agg(l.key), array_agg(l.id) INTO lk, li FROM (
    SELECT key, id FROM @schema.leases WHERE expires <= now LIMIT lim) l;
  IF doomed IS NULL AND lk IS NULL THEN
    RETURN 0;
  END IF;
  PERFORM pg_advisory_xact_lock(@lock);
  now := floor(extract(epoch FROM clock_timestamp()) * 1000000);
  IF lk IS NOT NULL THEN
    DELETE FROM @schema.leases x USING unnest(lk, li) AS u(key, id)
      WHERE x.key = u.key AND x.id = u.id AND x.expires <= now;
    GET DIAGNOSTICS n = ROW_COUNT;
  END IF;
  IF doomed IS NOT NULL THEN
    DELETE FROM @schema.buckets b WHERE b.key = ANY (doomed) AND b.fresh_at <= now
      AND NOT EXISTS (SELECT 1 FROM @schema.leases x WHERE x.key = b.key AND x.expires > now);
    GET DIAGNOSTICS m = ROW_COUNT;
  END IF;
  IF n + m > 0 THEN -- decisions from now on are at least at now (see decide_v1)
    UPDATE @schema.swept w SET t = greatest(w.t, now) WHERE w.id = 0;
  END IF;
  RETURN n + m;
END $$;
