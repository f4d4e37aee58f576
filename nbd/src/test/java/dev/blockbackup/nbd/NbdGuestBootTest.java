package dev.blockbackup.nbd;

import static org.assertj.core.api.Assertions.assertThat;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import dev.blockbackup.formats.CacheMode;
import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import dev.blockbackup.testkit.QemuImg;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.util.HexFormat;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * A real guest on our export: QEMU (TCG) boots Debian's kernel with a busybox initramfs whose /init
 * writes 64 MiB of random data to its virtio disk, which is our NBD export of a qcow2, reads it
 * back with O_DIRECT and prints both checksums. The host then checks the image with qemu-img and
 * reads the same 64 MiB through QEMU: all three checksums agree.
 */
@Tag("interop")
class NbdGuestBootTest {

  static final long DISK = 256L << 20;
  static final int MIB = 64;
  /** The drivers the guest needs, which the cloud kernel builds as modules. */
  static final List<String> DRIVERS = List.of("kernel/drivers/virtio/virtio_pci.ko",
      "kernel/drivers/block/virtio_blk.ko");

  @TempDir Path dir;

  @Test
  void aGuestWritesAndReadsBackItsDiskOverOurExport() throws Exception {
    Path kernel = kernel();
    Path modules = Path.of("/lib/modules", kernel.getFileName().toString().substring("vmlinuz-".length()));
    Path busybox = Path.of("/bin/busybox");
    assumeTrue(Files.isExecutable(Path.of("/usr/bin/qemu-system-x86_64")) && Files.isExecutable(busybox)
        && Files.isRegularFile(modules.resolve("modules.dep")),
        "qemu-system-x86, a kernel and busybox-static (.ci/run installs them)");
    List<String> load = loadOrder(modules.resolve("modules.dep"));

    Initramfs initrd = new Initramfs().dir("bin").dir("lib").dir("proc").dir("sys").dir("dev").dir("tmp")
        .file("bin/busybox", 0755, busybox)
        .file("init", 0755, init(load).getBytes(StandardCharsets.US_ASCII));
    for (String m : load) {
      initrd.file("lib/" + Path.of(m).getFileName(), 0644, modules.resolve(m));
    }
    Path initrdFile = dir.resolve("initrd.cpio");
    initrd.writeTo(initrdFile);

    Path image = dir.resolve("guest.qcow2");
    String out;
    try (Qcow2Image disk = Qcow2Image.create(image, Qcow2CreateOptions.of(DISK), CacheMode.WRITEBACK);
        NbdServer server = NbdServer.builder().export(NbdExport.of("guest", disk)).tcp("127.0.0.1", 0).build()) {
      server.start();
      out = boot(kernel, initrdFile, "nbd://127.0.0.1:" + server.tcpAddress().getPort() + "/guest");
    }

    Matcher m = Pattern.compile("GUEST-WROTE ([0-9a-f]{32}).*GUEST-READ ([0-9a-f]{32})", Pattern.DOTALL).matcher(out);
    assertThat(m.find()).as("the guest's checksums in its console:%n%s", out).isTrue();
    assertThat(m.group(2)).as("what the guest read back").isEqualTo(m.group(1));
    QemuImg.assertCheckClean(image);
    Path raw = dir.resolve("guest.raw");
    QemuImg.img("convert", "-f", "qcow2", "-O", "raw", image, raw).assertExit(0);
    assertThat(md5(raw, (long) MIB << 20)).as("the image as QEMU reads it").isEqualTo(m.group(1));
  }

  /** The guest's /init: load virtio, write random data, read it back past the page cache, power off. */
  private static String init(List<String> modules) {
    String bb = "/bin/busybox ";
    StringBuilder s = new StringBuilder("#!/bin/busybox sh\n");
    s.append(bb).append("mount -t proc proc /proc\n");
    s.append(bb).append("mount -t sysfs sys /sys\n");
    s.append(bb).append("mount -t devtmpfs dev /dev\n");
    for (String m : modules) {
      s.append(bb).append("insmod /lib/").append(Path.of(m).getFileName()).append(" 2>/dev/null\n");
    }
    s.append("i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do ").append(bb).append("sleep 0.1; i=$((i+1)); done\n");
    s.append(bb).append("dd if=/dev/urandom of=/tmp/data bs=1M count=").append(MIB).append(" 2>/dev/null\n");
    s.append("echo GUEST-WROTE $(").append(bb).append("md5sum /tmp/data | ").append(bb).append("cut -d' ' -f1)\n");
    s.append(bb).append("dd if=/tmp/data of=/dev/vda bs=1M oflag=direct conv=fsync 2>/dev/null\n");
    s.append("echo GUEST-READ $(").append(bb).append("dd if=/dev/vda bs=1M count=").append(MIB)
        .append(" iflag=direct 2>/dev/null | ").append(bb).append("md5sum | ").append(bb).append("cut -d' ' -f1)\n");
    s.append(bb).append("poweroff -f\n");
    return s.toString();
  }

  /**
   * The modules to insmod for {@link #DRIVERS}, dependencies first. modules.dep lists what a module
   * needs with the deepest need last, and which module needs which changes between kernel builds
   * (virtio needs virtio_ring in one, not in another), so the order is read, not written down.
   */
  private static List<String> loadOrder(Path modulesDep) throws IOException {
    java.util.Map<String, List<String>> deps = new java.util.HashMap<>();
    for (String line : Files.readAllLines(modulesDep)) {
      int colon = line.indexOf(':');
      if (colon > 0) {
        String rest = line.substring(colon + 1).trim();
        deps.put(line.substring(0, colon), rest.isEmpty() ? List.of() : List.of(rest.split("\\s+")));
      }
    }
    java.util.LinkedHashSet<String> order = new java.util.LinkedHashSet<>();
    for (String d : DRIVERS) {
      List<String> needs = deps.get(d);
      assumeTrue(needs != null, d + " is not a module of this kernel");
      for (int i = needs.size() - 1; i >= 0; i--) {
        order.add(needs.get(i));
      }
      order.add(d);
    }
    return List.copyOf(order);
  }

  /** Boots the guest and returns its console; the testkit's runner bounds the wait. */
  private static String boot(Path kernel, Path initrd, String drive) {
    QemuImg.Result r = QemuImg.run("qemu-system-x86_64", "-machine", "q35,accel=tcg", "-m", "512",
        "-nodefaults", "-nographic", "-no-reboot", "-kernel", kernel, "-initrd", initrd,
        "-append", "console=ttyS0 quiet panic=-1", "-serial", "stdio",
        "-drive", "file=" + drive + ",format=raw,if=virtio,cache=none");
    return r.out() + r.err();
  }

  /** The newest kernel in /boot, or the test is skipped. */
  private static Path kernel() throws IOException {
    Path boot = Path.of("/boot");
    assumeTrue(Files.isDirectory(boot), "no /boot");
    try (Stream<Path> s = Files.list(boot)) {
      Path k = s.filter(p -> p.getFileName().toString().startsWith("vmlinuz-") && Files.isReadable(p))
          .max(Path::compareTo).orElse(null);
      assumeTrue(k != null, "no readable kernel in /boot (.ci/run installs linux-image-cloud-amd64)");
      return k;
    }
  }

  private static String md5(Path file, long length) throws Exception {
    MessageDigest md = MessageDigest.getInstance("MD5");
    try (InputStream in = Files.newInputStream(file)) {
      byte[] buf = new byte[1 << 20];
      long left = length;
      while (left > 0) {
        int n = in.read(buf, 0, (int) Math.min(buf.length, left));
        if (n < 0) {
          break;
        }
        md.update(buf, 0, n);
        left -= n;
      }
    }
    return HexFormat.of().formatHex(md.digest());
  }
}
