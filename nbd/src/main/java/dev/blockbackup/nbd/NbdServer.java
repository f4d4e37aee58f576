package dev.blockbackup.nbd;

import dev.blockbackup.engine.BitmapException;
import dev.blockbackup.engine.BlockNode;
import io.netty.bootstrap.ServerBootstrap;
import io.netty.buffer.PooledByteBufAllocator;
import io.netty.channel.AdaptiveRecvByteBufAllocator;
import io.netty.channel.WriteBufferWaterMark;
import io.netty.channel.Channel;
import io.netty.channel.ChannelHandlerContext;
import io.netty.channel.ChannelInitializer;
import io.netty.channel.ChannelOption;
import io.netty.channel.EventLoopGroup;
import io.netty.channel.MultiThreadIoEventLoopGroup;
import io.netty.channel.ServerChannel;
import io.netty.channel.epoll.Epoll;
import io.netty.channel.epoll.EpollIoHandler;
import io.netty.channel.epoll.EpollServerDomainSocketChannel;
import io.netty.channel.epoll.EpollServerSocketChannel;
import io.netty.channel.group.ChannelGroup;
import io.netty.channel.group.DefaultChannelGroup;
import io.netty.channel.nio.NioIoHandler;
import io.netty.channel.socket.nio.NioServerSocketChannel;
import io.netty.channel.unix.DomainSocketAddress;
import io.netty.util.concurrent.GlobalEventExecutor;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.SocketAddress;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.ThreadPoolExecutor;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * An NBD server (fixed newstyle, structured replies with sparse reads, block status for
 * base:allocation, qemu:allocation-depth and qemu:dirty-bitmap:NAME), as qemu-nbd or
 * qemu-storage-daemon's NBD export serves a QEMU user: one or more named {@link NbdExport}s of
 * {@code BlockDevice}s, on a Unix socket and/or TCP.
 *
 * <pre>{@code
 * try (NbdServer server = NbdServer.builder()
 *     .export(NbdExport.of("drive0", node).withDescription("the guest's disk"))
 *     .unixSocket(Path.of("/run/bb/nbd.sock"))      // nbd+unix:///drive0?socket=/run/bb/nbd.sock
 *     .tcp("127.0.0.1", 0)                           // an ephemeral port: server.tcpAddress()
 *     .build()) {
 *   server.start();
 *   ...
 * }
 * }</pre>
 *
 * <p>Netty's event loops only decode and encode; block I/O runs on a bounded worker pool, and a
 * connection stops reading while it has {@link Builder#maxInFlight} requests in flight, or while
 * the server's work queue holds {@link Builder#maxQueued} requests of all connections; a client
 * that has not finished its handshake {@link Builder#handshakeMaxSeconds} after connecting is
 * disconnected. The native epoll transport is used where it loads (a Unix socket needs it); TCP
 * falls back to NIO.
 * {@link #close()} stops accepting, lets requests in flight finish, closes the connections and
 * leaves the exported devices open: they belong to the caller. With {@link Builder#tls} every
 * client must start TLS (NBD_OPT_STARTTLS, X.509 credentials in QEMU's layout) before it may do
 * anything else, as with {@code qemu-nbd --tls-creds}.
 */
public final class NbdServer implements AutoCloseable {

  private static final System.Logger LOG = System.getLogger(NbdServer.class.getName());
  /** QEMU's default for nbd-server-start's handshake-max-seconds. */
  public static final int DEFAULT_HANDSHAKE_MAX_SECONDS = 10;

  private final Map<String, NbdExport> exports;
  private final Path unixSocket;
  private final String tcpHost;
  private final int tcpPort;
  private final int workerThreads;
  private final int eventLoopThreads;
  private final int maxInFlight;
  private final int maxQueued;
  private final long closeTimeoutMillis;
  /** Connections served at once, 0 for no limit (QAPI NbdServerOptions max-connections). */
  private final int maxConnections;
  /** The TLS every client must start before anything else, or null for plaintext. */
  private final TlsCredentials tls;
  /** Seconds from connect to transmission before a client is dropped, 0 for no limit. */
  private final int handshakeMaxSeconds;

  private EventLoopGroup group;
  private ExecutorService workers;
  private final List<Channel> listeners = new ArrayList<>();
  private ChannelGroup connections;
  private WorkQueue workQueue;
  private InetSocketAddress tcpAddress;
  private boolean started;
  private boolean closed;
  /** Whether the socket file at {@link #unixSocket} is ours to remove. */
  private boolean unixSocketBound;
  /** The exported bitmaps, busy while the server runs. */
  private final List<BlockNode.BitmapUse> bitmapUses = new ArrayList<>();

  private NbdServer(Builder b) {
    this.exports = Collections.unmodifiableMap(new LinkedHashMap<>(b.exports));
    this.unixSocket = b.unixSocket;
    this.tcpHost = b.tcpHost;
    this.tcpPort = b.tcpPort;
    this.workerThreads = b.workerThreads;
    this.eventLoopThreads = b.eventLoopThreads;
    this.maxInFlight = b.maxInFlight;
    this.maxQueued = b.maxQueued;
    this.closeTimeoutMillis = b.closeTimeoutMillis;
    this.maxConnections = b.maxConnections;
    this.tls = b.tls;
    this.handshakeMaxSeconds = b.handshakeMaxSeconds;
  }

  public static Builder builder() {
    return new Builder();
  }

  /** Whether the native epoll transport loads here (else TCP uses NIO and Unix sockets are refused). */
  public static boolean isEpollAvailable() {
    return Epoll.isAvailable();
  }

  /**
   * Binds the sockets and starts serving.
   *
   * @throws IOException if a socket cannot be bound (the server is then closed again)
   */
  public synchronized void start() throws IOException {
    if (started) {
      throw new IllegalStateException("the server was started already");
    }
    started = true;
    useBitmaps();
    boolean epoll = Epoll.isAvailable();
    if (unixSocket != null && !epoll) {
      throw new IOException("a Unix socket needs Netty's native epoll transport, which does not load here: "
          + Epoll.unavailabilityCause());
    }
    group = new MultiThreadIoEventLoopGroup(eventLoopThreads,
        epoll ? EpollIoHandler.newFactory() : NioIoHandler.newFactory());
    AtomicInteger n = new AtomicInteger();
    // The pool's own queue has no fixed size: WorkQueue bounds it by stopping the connections'
    // reads, and a fixed size would have to refuse the requests a connection decoded before it
    // stopped, which would fail requests the client rightly sent.
    ThreadPoolExecutor pool = new ThreadPoolExecutor(workerThreads, workerThreads, 60, TimeUnit.SECONDS,
        new LinkedBlockingQueue<>(), r -> {
          Thread t = new Thread(r, "nbd-worker-" + n.incrementAndGet());
          t.setDaemon(true);
          return t;
        });
    workers = pool;
    connections = new DefaultChannelGroup("nbd-connections", GlobalEventExecutor.INSTANCE);
    workQueue = new WorkQueue(pool, maxQueued);
    ConnectionSettings settings = new ConnectionSettings(exports, workQueue, maxInFlight, handshakeMaxSeconds,
        tls == null ? null : tls.sslContext());
    try {
      if (unixSocket != null) {
        removeStaleSocket(unixSocket);
        listeners.add(bind(EpollServerDomainSocketChannel.class, new DomainSocketAddress(unixSocket.toFile()),
            settings, false));
        unixSocketBound = true;
      }
      if (tcpHost != null) {
        Channel ch = bind(epoll ? EpollServerSocketChannel.class : NioServerSocketChannel.class,
            new InetSocketAddress(tcpHost, tcpPort), settings, true);
        listeners.add(ch);
        tcpAddress = (InetSocketAddress) ch.localAddress();
      }
    } catch (IOException | RuntimeException e) {
      close();
      throw e;
    }
  }

  /**
   * Marks every exported bitmap busy, as QEMU's block-export-add does, so no job or bitmap
   * command changes what clients are reading; all or none.
   */
  private void useBitmaps() throws IOException {
    for (NbdExport e : exports.values()) {
      for (NbdExport.ExportedBitmap b : e.bitmaps()) {
        try {
          bitmapUses.add(b.node().useBitmap(b.name()));
        } catch (BitmapException ex) {
          releaseBitmaps();
          started = false;
          throw new IOException("export '" + e.name() + "': cannot export bitmap '" + b.name() + "' of node '"
              + b.node().name() + "': " + ex.getMessage(), ex);
        }
      }
    }
  }

  private void releaseBitmaps() {
    bitmapUses.forEach(BlockNode.BitmapUse::close);
    bitmapUses.clear();
  }

  private Channel bind(Class<? extends ServerChannel> type, SocketAddress address, ConnectionSettings settings,
      boolean tcp) throws IOException {
    ServerBootstrap b = new ServerBootstrap().group(group).channel(type)
        .childHandler(new ChannelInitializer<Channel>() {
          @Override
          protected void initChannel(Channel ch) {
            // Refused at accept, before the handshake, so the connections already served never notice.
            // Listeners share one event loop group but may run on different loops: the count and the
            // add are one step under the group's lock.
            synchronized (connections) {
              if (maxConnections > 0 && connections.size() >= maxConnections) {
                LOG.log(System.Logger.Level.DEBUG, () -> ch + ": refused, " + maxConnections + " connections already");
                ch.close();
                return;
              }
              connections.add(ch);
            }
            NbdDecoder decoder = new NbdDecoder();
            ch.pipeline().addLast("decoder", decoder)
                .addLast("resumer", decoder.resumer())
                .addLast("encoder", NbdEncoder.INSTANCE)
                .addLast("handshake", new HandshakeHandler(settings));
          }
        });
    // Reads of up to 1 MiB rather than Netty's 64 KiB: a write's payload then mostly arrives in
    // the buffer it is decoded from, and the decoder slices it there instead of copying it into a
    // growing cumulation piece by piece.
    b.childOption(ChannelOption.RCVBUF_ALLOCATOR, new AdaptiveRecvByteBufAllocator(512, 64 << 10, 1 << 20));
    // Replies the client has not taken yet, above which the connection stops reading: Netty's 64
    // KiB would stop it after every 256 KiB read reply and start it again (two epoll_ctl calls a
    // request); requests in flight are bounded anyway (maxInFlight, MAX_IN_FLIGHT_BYTES).
    b.childOption(ChannelOption.WRITE_BUFFER_WATER_MARK, new WriteBufferWaterMark(2 << 20, 8 << 20));
    // Pooled arenas keep the request and reply buffers mapped: Netty 4.2's default (adaptive)
    // allocator gave large buffers back and faulted them in again, 31,000 page faults a 2 GiB read.
    b.childOption(ChannelOption.ALLOCATOR, PooledByteBufAllocator.DEFAULT);
    if (tcp) {
      b.childOption(ChannelOption.TCP_NODELAY, true);
    }
    try {
      return b.bind(address).sync().channel();
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw new IOException("interrupted binding " + address, e);
    } catch (Exception e) {
      throw new IOException("cannot listen on " + address + ": " + e.getMessage(), e);
    }
  }

  /** A socket file left by an earlier server is replaced, as QEMU does; anything else is refused. */
  private static void removeStaleSocket(Path path) throws IOException {
    if (Files.exists(path, LinkOption.NOFOLLOW_LINKS)) {
      if (Files.isRegularFile(path, LinkOption.NOFOLLOW_LINKS) || Files.isDirectory(path, LinkOption.NOFOLLOW_LINKS)) {
        throw new IOException("cannot listen on " + path + ": a file of that name exists and is not a socket");
      }
      Files.delete(path);
    }
  }

  /** The bound TCP address (with the real port when 0 was asked), or null without TCP. */
  public synchronized InetSocketAddress tcpAddress() {
    return tcpAddress;
  }

  /** The TLS credentials every client must use, or null if the server speaks plaintext. */
  public TlsCredentials tls() {
    return tls;
  }

  /** The Unix socket path, or null without one. */
  public Path unixSocket() {
    return unixSocket;
  }

  public Map<String, NbdExport> exports() {
    return exports;
  }

  /** Connections open now (handshaking or transmitting). */
  public int connectionCount() {
    ChannelGroup c = connections;
    return c == null ? 0 : c.size();
  }

  /** Requests of all connections handed to the workers and not yet done (for tests of back-pressure). */
  int queuedRequests() {
    WorkQueue q = workQueue;
    return q == null ? 0 : q.queued();
  }

  /**
   * Stops accepting, lets every request in flight finish and be answered (for at most the close
   * timeout), closes the connections and releases the threads. The exported devices stay open.
   */
  @Override
  public synchronized void close() {
    if (closed || !started) {
      closed = true;
      return;
    }
    closed = true;
    for (Channel l : listeners) {
      l.close().awaitUninterruptibly();
    }
    if (connections != null) {
      for (Channel ch : connections) {
        ch.eventLoop().execute(() -> {
          ChannelHandlerContext ctx = ch.pipeline().context(TransmissionHandler.class);
          if (ctx != null) {
            ((TransmissionHandler) ctx.handler()).shutdown(ctx);
          } else {
            ch.close();
          }
        });
      }
      long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(closeTimeoutMillis);
      for (Channel ch : connections) {
        long left = deadline - System.nanoTime();
        if (!ch.closeFuture().awaitUninterruptibly(Math.max(0, TimeUnit.NANOSECONDS.toMillis(left)))) {
          LOG.log(System.Logger.Level.WARNING, ch + ": requests still in flight after "
              + closeTimeoutMillis + " ms; closing anyway");
          ch.close().awaitUninterruptibly();
        }
      }
    }
    if (group != null) {
      group.shutdownGracefully(0, 1, TimeUnit.SECONDS).awaitUninterruptibly();
    }
    if (workers != null) {
      workers.shutdown();
      try {
        workers.awaitTermination(closeTimeoutMillis, TimeUnit.MILLISECONDS);
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
      }
    }
    releaseBitmaps();
    if (unixSocketBound) {
      try {
        Files.deleteIfExists(unixSocket);
      } catch (IOException e) {
        LOG.log(System.Logger.Level.DEBUG, () -> "cannot remove " + unixSocket + ": " + e);
      }
    }
  }

  /** How to build an {@link NbdServer}: at least one export and one socket. */
  public static final class Builder {
    private final Map<String, NbdExport> exports = new LinkedHashMap<>();
    private Path unixSocket;
    private String tcpHost;
    private int tcpPort;
    private int workerThreads = 32;
    private int eventLoopThreads = Math.min(4, Math.max(1, Runtime.getRuntime().availableProcessors()));
    private int maxInFlight = 32;
    private int maxQueued = 256;
    private long closeTimeoutMillis = 30_000;
    private int maxConnections;
    private TlsCredentials tls;
    private int handshakeMaxSeconds = DEFAULT_HANDSHAKE_MAX_SECONDS;

    private Builder() {}

    /** Adds an export; names must be unique. */
    public Builder export(NbdExport export) {
      Objects.requireNonNull(export, "export");
      if (exports.putIfAbsent(export.name(), export) != null) {
        throw new IllegalArgumentException("export '" + export.name() + "' is given twice");
      }
      return this;
    }

    /** Listens on a Unix socket at {@code path} (replacing a stale socket file there). */
    public Builder unixSocket(Path path) {
      this.unixSocket = Objects.requireNonNull(path, "path");
      return this;
    }

    /** Listens on TCP {@code host}:{@code port}; port 0 picks a free one ({@link NbdServer#tcpAddress()}). */
    public Builder tcp(String host, int port) {
      if (port < 0 || port > 65535) {
        throw new IllegalArgumentException("port (" + port + ") must be in 0..65535");
      }
      this.tcpHost = Objects.requireNonNull(host, "host");
      this.tcpPort = port;
      return this;
    }

    /** Threads that run block I/O for all connections (default 32). */
    public Builder workerThreads(int n) {
      if (n < 1) {
        throw new IllegalArgumentException("workerThreads (" + n + ") must be positive");
      }
      this.workerThreads = n;
      return this;
    }

    /** Netty event loop threads (default: the cores, at most 4). */
    public Builder eventLoopThreads(int n) {
      if (n < 1) {
        throw new IllegalArgumentException("eventLoopThreads (" + n + ") must be positive");
      }
      this.eventLoopThreads = n;
      return this;
    }

    /** Requests in flight per connection before it stops reading (default 32). */
    public Builder maxInFlight(int n) {
      if (n < 1 || n > 1024) {
        throw new IllegalArgumentException("maxInFlight (" + n + ") must be in 1..1024");
      }
      this.maxInFlight = n;
      return this;
    }

    /**
     * Requests of all connections handed to the workers and not yet done, above which every
     * connection stops reading until the queue drains (default 256). No request is refused for it.
     */
    public Builder maxQueued(int n) {
      if (n < 1) {
        throw new IllegalArgumentException("maxQueued (" + n + ") must be positive");
      }
      this.maxQueued = n;
      return this;
    }

    /** How long {@link NbdServer#close()} waits for requests in flight (default 30 s). */
    public Builder closeTimeoutMillis(long ms) {
      if (ms < 0) {
        throw new IllegalArgumentException("closeTimeoutMillis (" + ms + ") must not be negative");
      }
      this.closeTimeoutMillis = ms;
      return this;
    }

    /**
     * Connections served at the same time; one more is closed as it is accepted (default 0: no
     * limit, as QAPI's NbdServerOptions max-connections).
     */
    public Builder maxConnections(int n) {
      if (n < 0) {
        throw new IllegalArgumentException("maxConnections (" + n + ") must not be negative");
      }
      this.maxConnections = n;
      return this;
    }

    /**
     * Requires TLS of every client, as {@code qemu-nbd --tls-creds} does: before NBD_OPT_STARTTLS
     * succeeds, every other option is refused with NBD_REP_ERR_TLS_REQD (NBD_OPT_EXPORT_NAME, which
     * has no error reply, closes the connection), so no export is reachable in plaintext.
     */
    public Builder tls(TlsCredentials credentials) {
      this.tls = Objects.requireNonNull(credentials, "credentials");
      return this;
    }

    /**
     * {@link #tls(TlsCredentials)} with the credentials of QEMU's {@code tls-creds-x509} directory
     * {@code dir}; {@code verifyPeer} is QEMU's verify-peer (on by default in QEMU, see
     * {@link TlsCredentials#load(Path)}).
     *
     * @throws TlsCredentialsException if a file of {@code dir} is missing or unusable
     */
    public Builder tls(Path dir, boolean verifyPeer) throws TlsCredentialsException {
      return tls(TlsCredentials.load(dir, verifyPeer));
    }

    /**
     * Seconds a client has from connecting to entering transmission (NBD_OPT_GO or
     * NBD_OPT_EXPORT_NAME done) before it is disconnected, 0 for no limit (default 10, as QAPI's
     * NbdServerOptions handshake-max-seconds). A client that connects and stays silent otherwise
     * holds a connection, and with {@link #maxConnections} a slot, for ever.
     */
    public Builder handshakeMaxSeconds(int seconds) {
      if (seconds < 0) {
        throw new IllegalArgumentException("handshakeMaxSeconds (" + seconds + ") must not be negative");
      }
      this.handshakeMaxSeconds = seconds;
      return this;
    }

    public NbdServer build() {
      if (exports.isEmpty()) {
        throw new IllegalArgumentException("an NBD server needs at least one export");
      }
      if (unixSocket == null && tcpHost == null) {
        throw new IllegalArgumentException("an NBD server needs a Unix socket or a TCP address to listen on");
      }
      return new NbdServer(this);
    }
  }
}
