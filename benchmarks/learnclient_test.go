package main

import (
	"net/http"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/stretchr/testify/assert"
)

// TestAWSResponseError: the AWS contender's 429 is what the SDK takes for
// a throttle, retryable, with a throttle's backoff (up to 1 s on the
// first retry, against 50 ms for other errors), and a 500 is no throttle.
func TestAWSResponseError(t *testing.T) {
	throttles := retry.IsErrorThrottles(retry.DefaultThrottles)
	am := retry.NewAdaptiveMode()
	tooMany := awsResponseError(&http.Response{StatusCode: http.StatusTooManyRequests, Status: "429 Too Many Requests"})
	assert.Equal(t, aws.TrueTernary, throttles.IsErrorThrottle(tooMany), "a 429 is a throttle")
	assert.True(t, am.IsErrorRetryable(tooMany), "a 429 is retryable")
	var longest time.Duration
	for range 200 {
		d, err := am.RetryDelay(1, tooMany)
		assert.NoError(t, err)
		longest = max(longest, d)
	}
	assert.Greater(t, longest, 100*time.Millisecond, "a throttle's first backoff is drawn from [0, 1s)")

	failed := awsResponseError(&http.Response{StatusCode: http.StatusInternalServerError, Status: "500 Internal Server Error"})
	assert.NotEqual(t, aws.TrueTernary, throttles.IsErrorThrottle(failed), "a 500 taken for a throttle")
}
