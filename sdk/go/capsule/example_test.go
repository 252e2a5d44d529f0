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

// Set up a team: create it, act in it, add a registered colleague and
// invite a newcomer. Team calls need a user's session token (the token of
// a login), not a team API key.
func ExampleTeamService_Create() {
	ctx := context.Background()
	c, _ := capsule.New(os.Getenv("CAPSULE_API_URL"), capsule.WithAPIKey(os.Getenv("CAPSULE_SESSION")))
	team, err := c.Teams.Create(ctx, "Research")
	if err != nil {
		log.Fatal(err)
	}
	sess, err := c.Teams.Switch(ctx, team.ID) // a session acting in the new team
	if err != nil {
		log.Fatal(err)
	}
	c, _ = capsule.New(c.URL(), capsule.WithAPIKey(sess.Token))
	if _, err := c.Teams.AddMember(ctx, team.ID, "alice@example.com", capsule.RoleAdmin); errors.Is(err, capsule.ErrNotFound) {
		// Nobody registered with it: invite the address instead.
		inv, err := c.Teams.Invite(ctx, team.ID, capsule.InviteOptions{Email: "alice@example.com", Role: capsule.RoleAdmin})
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println("send this to alice:", inv.Token)
	}
}

// Read who did what in the team, newest first: the pages are fetched as
// the loop goes, and stopping the loop stops fetching.
func ExampleTeamService_AuditLog() {
	ctx := context.Background()
	c, _ := capsule.New(os.Getenv("CAPSULE_API_URL"), capsule.WithAPIKey(os.Getenv("CAPSULE_SESSION")))
	n := 0
	for e, err := range c.Teams.AuditLog(ctx, capsule.AuditLogOptions{Actions: []string{"member.add", "member.remove"}}) {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(e.CreatedAt.Format(time.DateTime), e.ActorName, e.Action, e.ResourceID)
		if n++; n == 20 {
			break
		}
	}
}

// As a platform admin, disable every user of a domain and list the hosts
// of the teams that bring their own.
func ExampleAdminService_Users() {
	ctx := context.Background()
	c, _ := capsule.New(os.Getenv("CAPSULE_API_URL"), capsule.WithAPIKey(os.Getenv("CAPSULE_ADMIN_SESSION")))
	for u, err := range c.Admin.Users(ctx, capsule.UserListOptions{EmailPrefix: "intern-"}) {
		if errors.Is(err, capsule.ErrForbidden) {
			log.Fatal("not a platform admin's session")
		}
		if err != nil {
			log.Fatal(err)
		}
		if _, err := c.Admin.SetUserDisabled(ctx, u.ID, true); err != nil {
			log.Fatal(err)
		}
	}
	for h, err := range c.Admin.Hosts(ctx, capsule.PageOptions{}) {
		if err != nil {
			log.Fatal(err)
		}
		if h.BYOC {
			fmt.Println(h.Name, h.TeamName, h.Status)
		}
	}
}
