package dev.blockbackup.cli;

import dev.blockbackup.engine.BitmapException;
import dev.blockbackup.engine.BlockNode;
import dev.blockbackup.engine.JobException;
import dev.blockbackup.engine.JobManager;
import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.CacheMode;
import dev.blockbackup.formats.ImageFormat;
import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import dev.blockbackup.nbd.FleecingExport;
import dev.blockbackup.nbd.NbdExport;
import dev.blockbackup.nbd.NbdServer;
import dev.blockbackup.nbd.TlsCredentials;
import dev.blockbackup.nbd.TlsCredentialsException;
import java.io.IOException;
import java.io.PrintWriter;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.Callable;
import picocli.CommandLine.Command;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.Spec;

/**
 * {@code blockbackup serve}: exports images over NBD, as qemu-storage-daemon with an nbd-server
 * and one block-export per image, until SIGTERM or SIGINT; then lets requests in flight finish and
 * closes every image (which stores a qcow2's persistent bitmaps).
 *
 * <p>With {@code --fleece} each image is fleeced as libvirt's pull-mode backup does it: the image
 * is exported writable as NAME and its point in time read-only as NAME-snapshot (see
 * {@link FleecingExport}); {@code --bitmap} bitmaps then go, frozen at that instant, on the
 * snapshot export. At the end the server closes first (it holds the frozen bitmaps), then the
 * fleeces (their temporary images are deleted), then the images.
 */
@Command(name = "serve", description = "Export images over NBD until SIGTERM/SIGINT, printing one URI per"
    + " export and address (as qemu-img and nbdinfo take them). With no IMAGE, serves a demo disk.")
final class ServeCommand implements Callable<Integer> {

  /** QEMU's NBD_DEFAULT_MAX_CONNECTIONS, the default of nbd-server-start's max-connections. */
  static final int DEFAULT_MAX_CONNECTIONS = 100;
  static final String DEFAULT_ADDRESS = "tcp:127.0.0.1:10809";
  private static final long DEMO_SIZE = 64L * 1024 * 1024;

  @Spec CommandSpec spec;

  @Parameters(paramLabel = "IMAGE[,name=N][,ro]", arity = "0..*",
      description = "An image to export (raw or qcow2); name= sets its export name (default: the file name"
          + " without its extension), ro exports it read-only.")
  List<String> images = new ArrayList<>();

  @Option(names = "--nbd", paramLabel = "unix:PATH|tcp:HOST:PORT",
      description = "Where to listen; may be repeated (default " + DEFAULT_ADDRESS + ").")
  List<String> addresses = new ArrayList<>();

  @Option(names = "--export-name", paramLabel = "NAME", description = "The export name of the single IMAGE.")
  String exportName;

  @Option(names = {"-r", "--read-only"}, description = "Export every image read-only.")
  boolean readOnly;

  @Option(names = "--max-connections", paramLabel = "N",
      description = "Connections served at once, 0 for unlimited (default " + DEFAULT_MAX_CONNECTIONS + ").")
  int maxConnections = DEFAULT_MAX_CONNECTIONS;

  @Option(names = {"-A", "--allocation-depth"},
      description = "Offer the qemu:allocation-depth metadata context (as qemu-nbd -A).")
  boolean allocationDepth;

  @Option(names = "--handshake-max-seconds", paramLabel = "N",
      description = "Seconds a client has from connecting to finishing its handshake before it is disconnected,"
          + " 0 for no limit (default " + NbdServer.DEFAULT_HANDSHAKE_MAX_SECONDS + ", as QEMU).")
  int handshakeMaxSeconds = NbdServer.DEFAULT_HANDSHAKE_MAX_SECONDS;

  @Option(names = "-f", paramLabel = "FORMAT", description = "The images' format (default: probed).")
  String format;

  @Option(names = {"-B", "--bitmap"}, paramLabel = "NAME", description = "Offer the image's dirty bitmap NAME as"
      + " the metadata context qemu:dirty-bitmap:NAME, as qemu-nbd -B (single IMAGE; may be repeated; busy while"
      + " served). With --fleece it goes, frozen at the point in time, on the snapshot export.")
  List<String> bitmaps = new ArrayList<>();

  @Option(names = "--fleece", description = "Pull-mode fleecing: export each image writable as NAME and its"
      + " point in time (a backup job with sync=none) read-only as NAME" + FleecingExport.SNAPSHOT_SUFFIX + ".")
  boolean fleece;

  @Option(names = "--fleece-dir", paramLabel = "DIR", description = "Where --fleece keeps its temporary qcow2"
      + " images, deleted at the end (default: each image's directory).")
  Path fleeceDir;

  @Option(names = {"-U", "--force-share"}, description = "Open the images without the locks that would"
      + " conflict with a writer such as QEMU (read-only exports only), as qemu-img -U.")
  boolean forceShare;

  @Option(names = "--tls-creds", paramLabel = "DIR", description = "Require TLS of every client, with the X.509"
      + " credentials in DIR in QEMU's tls-creds-x509 layout (ca-cert.pem, server-cert.pem, server-key.pem),"
      + " as qemu-nbd --tls-creds.")
  Path tlsCreds;

  @Option(names = "--tls-verify-peer", negatable = true, description = "Whether a client must present a"
      + " certificate signed by DIR's ca-cert.pem (default on, as QEMU's verify-peer).")
  Boolean tlsVerifyPeer;

  /** One IMAGE argument, parsed. */
  record Image(Path path, String name, boolean readOnly, ImageFormat format) {}

  /** One --nbd argument: a Unix socket path, or a TCP host and port. */
  record Address(Path unix, String host, int port) {
    String uri(String export) {
      return unix != null ? "nbd+unix:///" + export + "?socket=" + unix
          : "nbd://" + (host.contains(":") ? "[" + host + "]" : host) + ":" + port + "/" + export;
    }
  }

  @Override
  public Integer call() throws IOException, InterruptedException {
    PrintWriter out = spec.commandLine().getOut();
    // Everything is checked before any image is opened or the demo disk made.
    List<Address> listen = new ArrayList<>();
    for (String a : addresses.isEmpty() ? List.of(DEFAULT_ADDRESS) : addresses) {
      listen.add(address(a));
    }
    if (listen.stream().filter(a -> a.unix() != null).count() > 1 || listen.stream().filter(a -> a.host() != null).count() > 1) {
      throw new UserError("--nbd: at most one unix: and one tcp: address");
    }
    if (maxConnections < 0) {
      throw new UserError("invalid --max-connections '" + maxConnections + "': must be 0 (unlimited) or more");
    }
    if (handshakeMaxSeconds < 0) {
      throw new UserError("invalid --handshake-max-seconds '" + handshakeMaxSeconds
          + "': must be 0 (no limit) or more");
    }
    if (exportName != null && images.size() != 1) {
      throw new UserError("--export-name names the export of a single IMAGE; use IMAGE,name=N for several");
    }
    if (format != null) {
      Images.driver(Path.of("-f"), format);
    }
    TlsCredentials tls = tls();
    if (!bitmaps.isEmpty() && images.size() != 1) {
      throw new UserError("--bitmap names bitmaps of a single IMAGE");
    }
    if (bitmaps.stream().distinct().count() != bitmaps.size()) {
      throw new UserError("--bitmap: a bitmap is named twice");
    }
    if (fleeceDir != null && !fleece) {
      throw new UserError("--fleece-dir is only for --fleece");
    }
    if (fleeceDir != null) {
      checkFleeceDir(fleeceDir);
    }
    List<Image> parsed = new ArrayList<>();
    Set<String> names = new HashSet<>();
    for (String arg : images) {
      Image img = image(arg);
      if (forceShare && !img.readOnly()) {
        throw new UserError("-U opens '" + img.path() + "' without its locks, so it can only be exported read-only"
            + " (add -r or ,ro)");
      }
      if (!names.add(img.name())) {
        throw new UserError("export name '" + img.name() + "' is given twice (set one with ,name=N)");
      }
      if (fleece && !names.add(img.name() + FleecingExport.SNAPSHOT_SUFFIX)) {
        throw new UserError("export name '" + img.name() + FleecingExport.SNAPSHOT_SUFFIX + "' is given twice: --fleece"
            + " names the snapshot of '" + img.name() + "' so");
      }
      if (fleece && fleeceDir == null) {
        checkFleeceDir(img.path().toAbsolutePath().getParent());
      }
      parsed.add(img);
    }
    for (Address a : listen) {
      if (a.unix() != null) {
        Images.checkCreatable(a.unix());
        if (Files.isRegularFile(a.unix())) {
          throw new UserError("--nbd unix:" + a.unix() + ": a file of that name exists and is not a socket");
        }
      }
    }

    if (parsed.isEmpty()) {
      Path demo = demoDisk();
      out.println("serving a demo disk (64 MiB sparse qcow2 with some data): " + demo);
      parsed.add(new Image(demo, "demo", readOnly, ImageFormat.QCOW2));
    }
    List<BlockDevice> opened = new ArrayList<>();
    List<FleecingExport> fleeces = new ArrayList<>();
    List<String> contexts = new ArrayList<>();
    try {
      NbdServer.Builder b = NbdServer.builder().maxConnections(maxConnections)
          .handshakeMaxSeconds(handshakeMaxSeconds);
      if (tls != null) {
        b.tls(tls);
      }
      JobManager jobs = new JobManager();
      for (Image img : parsed) {
        BlockDevice dev = Images.open(img.path(), img.format(), img.readOnly(), CacheMode.WRITEBACK, forceShare);
        opened.add(dev);
        BlockNode node = BlockNode.of(img.name(), dev);
        if (fleece) {
          FleecingExport f = fleece(jobs, node, img);
          fleeces.add(f);
          b.export(f.liveExport().withReadOnly(img.readOnly()).withAllocationDepth(allocationDepth));
          b.export(f.snapshotExport().withAllocationDepth(allocationDepth));
          f.bitmapContexts().forEach(c -> contexts.add(c + " on " + f.snapshotExport().name()));
        } else {
          NbdExport e = NbdExport.of(img.name(), node).withReadOnly(img.readOnly())
              .withAllocationDepth(allocationDepth);
          for (String bm : bitmaps) {
            try {
              node.useBitmap(bm).close(); // the server's checks, with QEMU's messages, before it starts
            } catch (BitmapException missing) {
              throw new UserError("--bitmap: image '" + img.path() + "': " + missing.getMessage(), missing);
            }
            e = e.withBitmap(node, bm);
            contexts.add("qemu:dirty-bitmap:" + bm + " on " + img.name());
          }
          b.export(e);
        }
      }
      for (Address a : listen) {
        if (a.unix() != null) {
          b.unixSocket(a.unix());
        } else {
          b.tcp(a.host(), a.port());
        }
      }
      serve(b.build(), parsed, listen, contexts, out, fleeces, opened);
    } finally {
      closeAll(fleeces, opened);
    }
    return 0;
  }

  /** Fleeces {@code node}, with the mistakes a user can make told as such. */
  private FleecingExport fleece(JobManager jobs, BlockNode node, Image img) throws IOException {
    Path dir = fleeceDir != null ? fleeceDir : img.path().toAbsolutePath().getParent();
    try {
      return FleecingExport.start(jobs, node, img.name(), dir, bitmaps);
    } catch (BitmapException e) {
      throw new UserError("--bitmap: image '" + img.path() + "': " + e.getMessage(), e);
    } catch (JobException e) {
      throw new UserError("--fleece: image '" + img.path() + "': " + e.getMessage(), e);
    } catch (BlockIOException e) {
      throw e;
    } catch (IOException e) {
      throw new UserError("--fleece: cannot create a temporary image in '" + dir + "': " + Images.reason(e), e);
    }
  }

  /** The fleecing images' directory must exist and take new files. */
  private static void checkFleeceDir(Path dir) {
    if (!Files.isDirectory(dir)) {
      throw new UserError("--fleece-dir '" + dir + "': no such directory");
    }
    if (!Files.isWritable(dir)) {
      throw new UserError("--fleece: cannot create a temporary image in '" + dir + "': permission denied"
          + " (choose another with --fleece-dir)");
    }
  }

  /**
   * Starts the server, prints the URIs and waits for SIGTERM/SIGINT; returns once the server and
   * the {@code opened} devices are closed.
   */
  private void serve(NbdServer server, List<Image> images, List<Address> listen, List<String> contexts,
      PrintWriter out, List<FleecingExport> fleeces, List<BlockDevice> opened) throws InterruptedException, IOException {
    CountDownLatch stop = new CountDownLatch(1);
    CountDownLatch done = new CountDownLatch(1);
    AtomicInteger status = new AtomicInteger(1);
    // The JVM exits once its hooks return, with 128+signal: the hook waits until the images are
    // closed, then ends the process with 0, since stopping on SIGTERM/SIGINT is serve's normal end
    // (1 if closing an image failed).
    Thread hook = new Thread(() -> {
      stop.countDown();
      try {
        done.await();
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
      }
      Runtime.getRuntime().halt(status.get());
    }, "serve-shutdown");
    Runtime.getRuntime().addShutdownHook(hook);
    try (server) {
      try {
        server.start();
      } catch (IOException e) {
        throw new UserError(e.getMessage(), e);
      }
      for (Address a : listen) {
        Address bound = a.unix() != null ? a : new Address(null, a.host(), server.tcpAddress().getPort());
        for (Image img : images) {
          out.println(bound.uri(img.name()));
          if (fleece) {
            out.println(bound.uri(img.name() + FleecingExport.SNAPSHOT_SUFFIX));
          }
        }
      }
      for (String c : contexts) {
        out.println("bitmap context " + c);
      }
      if (server.tls() != null) {
        // the URIs stay nbd:// as qemu-img takes them; QEMU's TLS goes in a separate object
        out.println("TLS required (verify-peer " + (server.tls().verifyPeer() ? "on" : "off") + "): qemu-img"
            + " --object tls-creds-x509,id=tls0,endpoint=client,dir=CLIENT-DIR --image-opts"
            + " driver=nbd,server.type=inet,server.host=HOST,server.port=PORT,export=NAME,tls-creds=tls0;"
            + " libnbd: nbds://HOST:PORT/NAME?tls-certificates=CLIENT-DIR");
      }
      out.flush();
      stop.await();
      server.close();
      closeAll(fleeces, opened);
      status.set(0);
    } finally {
      out.flush();
      done.countDown();
      if (stop.getCount() > 0) {
        // ended without a signal (the server could not start): the exit code is the caller's
        try {
          Runtime.getRuntime().removeShutdownHook(hook);
        } catch (IllegalStateException shuttingDown) {
          // a signal came meanwhile; the hook ends the process
        }
      }
    }
  }

  /** The --tls-creds credentials, loaded and checked before any image is opened; null without TLS. */
  private TlsCredentials tls() {
    if (tlsCreds == null) {
      if (tlsVerifyPeer != null) {
        throw new UserError("--[no-]tls-verify-peer needs --tls-creds DIR");
      }
      return null;
    }
    boolean verify = tlsVerifyPeer == null || tlsVerifyPeer;
    try {
      return TlsCredentials.load(tlsCreds, verify);
    } catch (TlsCredentialsException e) {
      throw new UserError("--tls-creds: " + e.getMessage(), e);
    }
  }

  /**
   * Closes the fleeces, then the devices (a fleece's job must be off its node before the node
   * closes); each list is emptied, so a second call does nothing.
   */
  private static void closeAll(List<FleecingExport> fleeces, List<BlockDevice> devices) throws IOException {
    IOException first = null;
    List<FleecingExport> ended = new ArrayList<>(fleeces);
    fleeces.clear();
    for (FleecingExport f : ended) {
      try {
        f.close();
      } catch (IOException e) {
        first = first == null ? e : suppress(first, e);
      } catch (RuntimeException e) {
        IOException io = new IOException("cannot end the fleece of '" + f.liveExport().name() + "': " + e.getMessage(), e);
        first = first == null ? io : suppress(first, io);
      }
    }
    List<BlockDevice> all = new ArrayList<>(devices);
    devices.clear();
    for (BlockDevice d : all) {
      try {
        d.flush();
        d.close();
      } catch (BlockIOException e) {
        if (first == null) {
          first = e;
        } else {
          first.addSuppressed(e);
        }
      }
    }
    if (first != null) {
      throw first;
    }
  }

  private static IOException suppress(IOException first, IOException next) {
    first.addSuppressed(next);
    return first;
  }

  /** An --nbd address: unix:PATH or tcp:HOST:PORT ([v6]:PORT too). */
  static Address address(String s) {
    if (s.startsWith("unix:") && s.length() > 5) {
      return new Address(Path.of(s.substring(5)), null, 0);
    }
    if (s.startsWith("tcp:")) {
      String hp = s.substring(4);
      int colon = hp.lastIndexOf(':');
      if (colon > 0 && colon < hp.length() - 1) {
        String host = hp.substring(0, colon);
        if (host.startsWith("[") && host.endsWith("]")) {
          host = host.substring(1, host.length() - 1);
        }
        try {
          int port = Integer.parseInt(hp.substring(colon + 1));
          if (port >= 0 && port <= 65535 && !host.isEmpty()) {
            return new Address(null, host, port);
          }
        } catch (NumberFormatException e) {
          // reported below
        }
      }
    }
    throw new UserError("invalid --nbd '" + s + "' (expected unix:PATH or tcp:HOST:PORT, port 0..65535)");
  }

  /** An IMAGE argument: the path, then ,name=N and ,ro in any order. */
  private Image image(String arg) {
    String[] parts = arg.split(",", -1);
    if (parts[0].isEmpty()) {
      throw new UserError("invalid IMAGE '" + arg + "': no file name");
    }
    Path path = Path.of(parts[0]);
    String name = exportName;
    boolean ro = readOnly;
    for (int i = 1; i < parts.length; i++) {
      String p = parts[i];
      if (p.equals("ro")) {
        ro = true;
      } else if (p.startsWith("name=") && p.length() > 5) {
        name = p.substring(5);
      } else {
        throw new UserError("invalid option '" + p + "' in IMAGE '" + arg + "' (expected name=N or ro)");
      }
    }
    if (name == null) {
      String base = path.getFileName().toString();
      int dot = base.lastIndexOf('.');
      name = dot > 0 ? base.substring(0, dot) : base;
    }
    ImageFormat fmt = Images.formatOf(path, format);
    if (!ro && !Files.isWritable(path)) {
      throw new UserError("cannot open '" + path + "' for writing: permission denied (export it with ,ro or -r)");
    }
    return new Image(path, name, ro, fmt);
  }

  /** A sparse qcow2 in a new temporary directory: a pattern at its start, a stretch at 16 MiB, holes elsewhere. */
  private static Path demoDisk() throws IOException, BlockIOException {
    Path dir = Files.createTempDirectory("blockbackup-serve-");
    Path path = dir.resolve("demo.qcow2");
    try (Qcow2Image img = Qcow2Image.create(path, Qcow2CreateOptions.of(DEMO_SIZE))) {
      ByteBuffer buf = ByteBuffer.allocate(1024 * 1024);
      for (int i = 0; i < buf.capacity(); i++) {
        buf.put(i, (byte) (i * 31 + 7));
      }
      img.write(0, buf.duplicate());
      img.write(16L * 1024 * 1024, buf.duplicate());
      img.flush();
    }
    return path;
  }
}
