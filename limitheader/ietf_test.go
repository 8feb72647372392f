package limitheader_test

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/limitheader"
)

// TestIETF reads the RateLimit and RateLimit-Policy fields, with the
// examples of draft-ietf-httpapi-ratelimit-headers-11 (sections 3.2 and
// 4.2, appendix B) and -07 (section 3.5).
func TestIETF(t *testing.T) {
	many := make([]string, 20)
	for i := range many {
		many[i] = `"p` + strconv.Itoa(i) + `";r=` + strconv.Itoa(i) + ";t=1"
	}
	manyPolicies := make([]string, 20)
	for i := range manyPolicies {
		manyPolicies[i] = `"p` + strconv.Itoa(i) + `";q=` + strconv.Itoa(i) + ";w=1"
	}
	var first16 []limitheader.Remaining
	var first16Policies []limitheader.Policy
	for i := range limitheader.MaxItems {
		first16 = append(first16, remaining("p"+strconv.Itoa(i), int64(i), sec))
		first16Policies = append(first16Policies, policy("p"+strconv.Itoa(i), int64(i), sec))
	}
	runSignalTests(t, []signalTest{
		// -11, section 3.2
		{"policy with a window", headers("RateLimit-Policy", `"default";q=100;w=10`), tableNow,
			ietf(ps(policy("default", 100, 10*sec)))},
		{"two policies", headers("RateLimit-Policy", `"permin";q=50;w=60,"perhr";q=1000;w=3600`), tableNow,
			ietf(ps(policy("permin", 50, time.Minute), policy("perhr", 1000, time.Hour)))},
		{"policy with a partition key", headers("RateLimit-Policy", `"peruser";q=100;w=60;pk=:cHsdsRa894==:`), tableNow,
			ietf(ps(policy("peruser", 100, time.Minute)))},
		{"policy with a quota unit", headers("RateLimit-Policy", `"peruser";q=65535;qu="content-bytes";w=10;pk=:sdfjLJUOUH==:`), tableNow,
			ietf(ps(limitheader.Policy{Name: "peruser", Quota: 65535, Window: 10 * sec, Unit: "content-bytes"}))},
		{"the issue's burst and day", headers("RateLimit-Policy", `"burst";q=100;w=60, "day";q=1000;w=86400`), tableNow,
			ietf(ps(policy("burst", 100, time.Minute), policy("day", 1000, 24*time.Hour)))},
		{"policy without a window", headers("RateLimit-Policy", `"total";q=10`), tableNow,
			ietf(ps(policy("total", 10, 0)))},
		// -11, section 4.2
		{"service limit", headers("RateLimit", `"default";r=50;t=30`), tableNow,
			ietf(nil, remaining("default", 50, 30*sec))},
		{"service limit without a window", headers("RateLimit", `"default";r=999;pk=:dHJpYWwxMjEzMjM=:`), tableNow,
			ietf(nil, limitheader.Remaining{Policy: "default", Units: 999, HasUnits: true})},
		{"service limit in bytes", headers("RateLimit", `"default";r=300000000;t=60;pk=:QXBwLTk5OQ==:`), tableNow,
			ietf(nil, remaining("default", 300000000, time.Minute))},
		// -11, appendix B
		{"B.2.1 fixed window", headers("RateLimit", `"fixedwindow";r=99;t=50`, "RateLimit-Policy", `"fixedwindow";q=100;w=60`), tableNow,
			ietf(ps(policy("fixedwindow", 100, time.Minute)), remaining("fixedwindow", 99, 50*sec))},
		{"B.3 Retry-After and slow down", headers("Retry-After", "20", "RateLimit-Policy", `"dynamic";q=100;w=60`, "RateLimit", `"dynamic";r=15;t=40`), tableNow,
			limitheader.Signal{RetryAfter: 20 * sec, HasRetryAfter: true, Family: limitheader.IETF,
				Policies: ps(policy("dynamic", 100, time.Minute)), Remaining: []limitheader.Remaining{remaining("dynamic", 15, 40*sec)}}},
		{"B.3.1 multiple windows", headers("RateLimit-Policy", `"hour";q=1000;w=3600, "day";q=5000;w=86400`, "RateLimit", `"day";r=100;t=36000`), tableNow,
			ietf(ps(policy("hour", 1000, time.Hour), policy("day", 5000, 24*time.Hour)), remaining("day", 100, 10*time.Hour))},
		{"FAQ: policies over two lines", headers(
			"RateLimit-Policy", `"sliding";q=100;w=60;burst=1000`,
			"RateLimit-Policy", `"fixed";q=5000;w=3600;burst=0`,
			"RateLimit", `"sliding";r=50;t=44`), tableNow,
			ietf(ps(policy("sliding", 100, time.Minute), policy("fixed", 5000, time.Hour)), remaining("sliding", 50, 44*sec))},
		{"several service limits", headers("RateLimit", `"burst";r=0;t=1, "daily";r=10;t=3600`), tableNow,
			ietf(nil, remaining("burst", 0, sec), remaining("daily", 10, time.Hour))},
		{"service limits over two lines", headers("RateLimit", `"a";r=2;t=10`, "RateLimit", `"b";r=0;t=20`), tableNow,
			ietf(nil, remaining("a", 2, 10*sec), remaining("b", 0, 20*sec))},
		{"token names", headers("RateLimit", `default;r=0;t=30`, "RateLimit-Policy", `default;q=5;w=1`), tableNow,
			ietf(ps(policy("default", 5, sec)), remaining("default", 0, 30*sec))},
		{"quoted separators", headers("RateLimit", `"x,y;t=5\"";r=0;t=7`), tableNow,
			ietf(nil, remaining(`x,y;t=5"`, 0, 7*sec))},
		{"t without r", headers("RateLimit", `"a";t=10`), tableNow,
			ietf(nil, limitheader.Remaining{Policy: "a", Reset: 10 * sec, HasReset: true})},
		{"decimal t", headers("RateLimit", `"a";r=1;t=1.5`), tableNow,
			ietf(nil, remaining("a", 1, 1500*time.Millisecond))},

		// -07, section 3.5: a dictionary and integer policies.
		{"-07 dictionary", headers("RateLimit-Policy", "100;w=10", "RateLimit", "limit=100, remaining=50, reset=5"), tableNow,
			ietf(ps(policy("", 100, 10*sec)), remaining("", 50, 5*sec))},
		{"-07 limit picks its policy", headers("RateLimit-Policy", "10;w=1, 50;w=60, 1000;w=3600, 5000;w=86400", "RateLimit", "limit=50, remaining=3, reset=20"), tableNow,
			ietf(ps(policy("", 50, time.Minute), policy("", 10, sec), policy("", 1000, time.Hour), policy("", 5000, 24*time.Hour)), remaining("", 3, 20*sec))},
		{"-07 limit without a policy", headers("RateLimit-Policy", "10;w=1;burst=1000", "RateLimit", "limit=100, remaining=0, reset=30"), tableNow,
			ietf(ps(policy("", 100, 0), policy("", 10, sec)), remaining("", 0, 30*sec))},
		{"-07 dictionary alone", headers("RateLimit", "limit=10, remaining=1, reset=7"), tableNow,
			ietf(ps(policy("", 10, 0)), remaining("", 1, 7*sec))},
		{"-07 limit only", headers("RateLimit", "limit=10"), tableNow,
			ietf(ps(policy("", 10, 0)))},

		// Malformed fields are ignored whole, bad items skipped.
		{"trailing comma", headers("RateLimit", `"a";r=0;t=5,`), tableNow, limitheader.Signal{}},
		{"garbage", headers("RateLimit", `;;;==,,"`, "RateLimit-Policy", `"unterminated;q=1`), tableNow, limitheader.Signal{}},
		{"empty", headers("RateLimit", "", "RateLimit-Policy", ""), tableNow, limitheader.Signal{}},
		{"negative t and r", headers("RateLimit", `"a";r=-1;t=-1, "b";r=1;t=2, "c";t=-0.5`), tableNow,
			ietf(nil, remaining("b", 1, 2*sec))},
		{"negative t only", headers("RateLimit", `"default";r=0;t=-1`), tableNow,
			ietf(nil, limitheader.Remaining{Policy: "default", HasUnits: true})},
		{"no r, no t", headers("RateLimit", `"default";pk=:YWJj:`), tableNow, limitheader.Signal{}},
		{"decimal r", headers("RateLimit", `"a";r=1.5`), tableNow, limitheader.Signal{}},
		{"string t", headers("RateLimit", `"a";r=1;t="5"`), tableNow,
			ietf(nil, limitheader.Remaining{Policy: "a", Units: 1, HasUnits: true})},
		{"integer name", headers("RateLimit", `5;r=0;t=3`), tableNow, limitheader.Signal{}},
		{"inner list", headers("RateLimit", `("a" "b");r=0;t=3, "c";r=1;t=1`), tableNow,
			ietf(nil, remaining("c", 1, sec))},
		{"policy without q", headers("RateLimit-Policy", `"a";w=60, "b";q=1;w=1`), tableNow,
			ietf(ps(policy("b", 1, sec)))},
		{"policy with a bad q", headers("RateLimit-Policy", `"a";q=-1;w=60, "b";q=1.5, "c";q="1"`), tableNow, limitheader.Signal{}},
		{"policy with a bad w", headers("RateLimit-Policy", `"a";q=1;w=0, "b";q=1;w=-60, "c";q=1;w=1.5, "d";q=1;w="60", "e";q=1;w=60`), tableNow,
			ietf(ps(policy("e", 1, time.Minute)))},
		{"policy with a bad qu", headers("RateLimit-Policy", `"a";q=1;qu=5, "b";q=1;qu="", "c";q=1;qu=requests`), tableNow,
			ietf(ps(policy("c", 1, 0)))},
		{"boolean policy", headers("RateLimit-Policy", `?1;q=1;w=1`), tableNow, limitheader.Signal{}},
		{"number too long", headers("RateLimit", `"a";r=1234567890123456;t=1`), tableNow, limitheader.Signal{}},

		// Bounds
		{"largest t", headers("RateLimit", `"a";r=999999999999999;t=999999999999999`), tableNow,
			ietf(nil, remaining("a", limitheader.MaxUnits, bucket.MaxDuration))},
		{"largest w", headers("RateLimit-Policy", `"a";q=999999999999999;w=999999999999999`), tableNow,
			ietf(ps(policy("a", limitheader.MaxUnits, bucket.MaxDuration)))},
		{"largest decimal t", headers("RateLimit", `"a";r=1;t=999999999999.999`), tableNow,
			ietf(nil, remaining("a", 1, bucket.MaxDuration))},
		{"MaxItems service limits", headers("RateLimit", strings.Join(many, ", ")), tableNow,
			ietf(nil, first16...)},
		{"MaxItems policies", headers("RateLimit-Policy", strings.Join(manyPolicies, ", ")), tableNow,
			ietf(first16Policies)},
	})
}
