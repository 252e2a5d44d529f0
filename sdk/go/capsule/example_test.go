package capsule_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"strings"
	"time"

	"github.com/capsulehq/capsule/sdk/go/capsule"
)

// Create a sandbox, run a command in it with its output streamed, and
// destroy it.
func Example() {
	ctx := context.Background()
	c, err := capsule.NewFromEnv() // CAPSULE_API_URL, CAPSULE_API_KEY
	if err != nil {
		log.Fatal(err)
	}
	sbx, err := c.Sandboxes.Create(ctx, capsule.CreateOptions{Template: "base", Timeout: 10 * time.Minute})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Sandboxes.Kill(context.WithoutCancel(ctx), sbx.ID)

	res, err := c.Commands.Run(ctx, sbx.ID, "python3 -c 'print(6*7)'", capsule.RunOptions{
		CommandOptions: capsule.CommandOptions{OnStdout: func(b []byte) { os.Stdout.Write(b) }},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("exit code", res.ExitCode)
}

// Write a file into a sandbox and read it back.
func ExampleFileService_Write() {
	ctx := context.Background()
	c, _ := capsule.NewFromEnv()
	if _, err := c.Files.Write(ctx, "SANDBOX-ID", "/home/user/hello.txt", "", strings.NewReader("hello\n")); err != nil {
		log.Fatal(err)
	}
	b, err := c.Files.Read(ctx, "SANDBOX-ID", "/home/user/hello.txt", "")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s", b)
}

// Keep a process running, talk to it through its input, and stop it.
func ExampleCommandService_Start() {
	ctx := context.Background()
	c, _ := capsule.NewFromEnv()
	p, err := c.Commands.Start(ctx, "SANDBOX-ID", "cat", capsule.StartOptions{
		Stdin:          true,
		CommandOptions: capsule.CommandOptions{OnStdout: func(b []byte) { fmt.Printf("%s", b) }},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()
	_ = p.SendStdin(ctx, []byte("echoed back\n"))
	_ = p.CloseStdin(ctx)
	res, _ := p.Wait(ctx)
	fmt.Println("exit code", res.ExitCode)
}

// Pause a sandbox to disk (memory included) and bring it back later.
func ExampleSandboxService_Pause() {
	ctx := context.Background()
	c, _ := capsule.NewFromEnv()
	if _, err := c.Sandboxes.Pause(ctx, "SANDBOX-ID"); err != nil {
		log.Fatal(err)
	}
	// … later, from any process:
	sbx, err := c.Sandboxes.Connect(ctx, "SANDBOX-ID") // resumes it
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(sbx.State)
}

// Iterate over every running sandbox with some metadata, page by page.
func ExampleSandboxService_List() {
	ctx := context.Background()
	c, _ := capsule.NewFromEnv()
	opts := capsule.ListOptions{States: []capsule.State{capsule.StateRunning}, Metadata: map[string]string{"agent": "planner"}}
	for sbx, err := range c.Sandboxes.List(ctx, opts) {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(sbx.ID, sbx.Template, sbx.CreatedAt)
	}
}

// Tell refusals apart by their class.
func ExampleAPIError() {
	ctx := context.Background()
	c, _ := capsule.NewFromEnv()
	_, err := c.Sandboxes.Get(ctx, "SANDBOX-ID")
	switch {
	case errors.Is(err, capsule.ErrNotFound):
		fmt.Println("no such sandbox in this team")
	case errors.Is(err, capsule.ErrUnauthorized):
		fmt.Println("check CAPSULE_API_KEY")
	case err != nil:
		var ae *capsule.APIError
		if errors.As(err, &ae) {
			fmt.Println("refused:", ae.Status, ae.Message, "request", ae.RequestID)
		}
	}
}
