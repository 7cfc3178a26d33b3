import { createConnection, createServer, type Server, type Socket } from "node:net";

/**
 * A TCP proxy for one directed peer link (the connections one node opens to another), on
 * 127.0.0.1. While blocked it resets every connection and refuses new ones, as a partition
 * does to a stream; with a delay it holds every chunk, in order, before passing it on.
 */
export class LinkProxy {
  private blocked = false;
  private delayMs = 0;
  private readonly sockets = new Set<Socket>();

  private constructor(
    private readonly server: Server,
    readonly port: number,
    readonly target: { host: string; port: number },
  ) {}

  static async start(target: string): Promise<LinkProxy> {
    const [host, port] = target.split(":");
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const address = server.address();
    if (typeof address !== "object" || address === null) throw new Error("proxy has no port");
    const proxy = new LinkProxy(server, address.port, {
      host: host ?? "127.0.0.1",
      port: Number(port),
    });
    server.on("connection", (socket) => proxy.accept(socket));
    return proxy;
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  get isBlocked(): boolean {
    return this.blocked;
  }

  block(): void {
    this.blocked = true;
    for (const socket of this.sockets) socket.destroy();
    this.sockets.clear();
  }

  unblock(): void {
    this.blocked = false;
  }

  setDelay(ms: number): void {
    this.delayMs = ms;
  }

  async close(): Promise<void> {
    this.block();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(client: Socket): void {
    if (this.blocked) {
      client.destroy();
      return;
    }
    const upstream = createConnection(this.target);
    this.sockets.add(client);
    this.sockets.add(upstream);
    const teardown = () => {
      client.destroy();
      upstream.destroy();
      this.sockets.delete(client);
      this.sockets.delete(upstream);
    };
    for (const socket of [client, upstream]) {
      socket.on("error", teardown);
      socket.on("close", teardown);
    }
    this.pipe(client, upstream);
    this.pipe(upstream, client);
  }

  /** Forward `from` to `to`, each chunk after the current delay, never out of order. */
  private pipe(from: Socket, to: Socket): void {
    let due = 0;
    from.on("data", (chunk: Buffer) => {
      if (this.delayMs === 0 && due <= performance.now()) {
        to.write(chunk);
        return;
      }
      due = Math.max(due, performance.now() + this.delayMs);
      setTimeout(() => to.writable && to.write(chunk), due - performance.now());
    });
  }
}
