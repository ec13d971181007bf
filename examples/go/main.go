// Command example is a small Go client of the scheduler: it creates a toolbox environment,
// waits for it to run by watching events, and deletes it again, printing each step.
//
// Build it in GOPATH mode (see scripts/build_go_example.sh, or `make go-example`), then:
//
//	build/go/example -address 127.0.0.1:50051 -name go-demo
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	schedulerv1 "github.com/scheduler/scheduler/gen/go/scheduler/v1"
)

func main() {
	address := flag.String("address", "127.0.0.1:50051", "scheduler address HOST:PORT")
	name := flag.String("name", "go-example", "name of the environment to create and delete")
	timeout := flag.Duration("timeout", 3*time.Minute, "how long the whole run may take")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if err := run(ctx, *address, *name); err != nil {
		fmt.Fprintln(os.Stderr, "error:", describe(err))
		os.Exit(1)
	}
}

func run(ctx context.Context, address, name string) error {
	conn, err := grpc.DialContext(ctx, address, grpc.WithInsecure(), grpc.WithBlock())
	if err != nil {
		return fmt.Errorf("connect to %s: %w", address, err)
	}
	defer conn.Close()
	client := schedulerv1.NewSchedulerServiceClient(conn)

	// Watch before creating, so that no event is missed: the first heartbeat proves the watch
	// is live (and carries the sequence a reconnect could resume from).
	events, err := client.WatchEvents(ctx, &schedulerv1.WatchEventsRequest{
		Name:              name,
		HeartbeatInterval: durationpb.New(time.Second),
	})
	if err != nil {
		return err
	}
	first, err := events.Recv()
	if err != nil {
		return err
	}
	fmt.Printf("watching events of %s from sequence %d\n", name, first.GetSequence())

	env, err := client.CreateEnvironment(ctx, &schedulerv1.CreateEnvironmentRequest{
		Name: name,
		Spec: &schedulerv1.EnvironmentSpecification{Stack: "toolbox"},
	})
	if err != nil {
		return err
	}
	fmt.Printf("created %s: %s\n", env.GetName(), env.GetStatus())

	if err := waitFor(events, schedulerv1.EventType_EVENT_TYPE_ENVIRONMENT_RUNNING); err != nil {
		return err
	}
	env, err = client.GetEnvironment(ctx, &schedulerv1.GetEnvironmentRequest{Name: name})
	if err != nil {
		return err
	}
	fmt.Printf("%s is %s with %d container(s)\n", name, env.GetStatus(), len(env.GetContainers()))

	// The etag makes the delete conditional: it fails with ABORTED if someone changed it meanwhile.
	deleted, err := client.DeleteEnvironment(ctx, &schedulerv1.DeleteEnvironmentRequest{Name: name, Etag: env.GetEtag()})
	if err != nil {
		return err
	}
	fmt.Printf("deleting %s: %s\n", name, deleted.GetStatus())
	if err := waitFor(events, schedulerv1.EventType_EVENT_TYPE_ENVIRONMENT_DELETED); err != nil {
		return err
	}
	fmt.Printf("%s deleted\n", name)
	return nil
}

// waitFor reads events until one of type want; a failed deployment ends the wait with an error.
func waitFor(events schedulerv1.SchedulerService_WatchEventsClient, want schedulerv1.EventType) error {
	for {
		event, err := events.Recv()
		if err == io.EOF {
			return fmt.Errorf("the event stream ended before %s", want)
		}
		if err != nil {
			return err
		}
		if event.GetType() == schedulerv1.EventType_EVENT_TYPE_HEARTBEAT {
			continue
		}
		fmt.Printf("event %d: %s %s %s\n", event.GetSequence(), event.GetType(), event.GetService(), event.GetMessage())
		switch event.GetType() {
		case want:
			return nil
		case schedulerv1.EventType_EVENT_TYPE_ENVIRONMENT_FAILED:
			return fmt.Errorf("deployment failed: %s", event.GetMessage())
		}
	}
}

// describe renders an RPC error with its machine-readable reason (google.rpc.ErrorInfo).
func describe(err error) string {
	st, ok := status.FromError(err)
	if !ok {
		return err.Error()
	}
	text := fmt.Sprintf("%s: %s", st.Code(), st.Message())
	for _, detail := range st.Details() {
		if info, ok := detail.(*errdetails.ErrorInfo); ok {
			text += fmt.Sprintf(" (reason %s, domain %s, metadata %v)", info.GetReason(), info.GetDomain(), info.GetMetadata())
		}
	}
	return text
}
