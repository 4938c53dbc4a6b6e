// TcpStore (see tcp_store.h). Wire format, both directions little-endian host order (one machine
// family): request [u8 op][u32 key bytes][u32 value bytes][key][value], reply [u8 status][u32 n][bytes].
// The server runs one thread per connection; a GET never blocks on the server: clients poll.
#include "dist/tcp_store.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "core/error.h"

namespace qtune {
namespace {

enum Op : uint8_t { kSet = 1, kGet = 2, kAdd = 3, kDel = 4 };

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

bool write_all(int fd, const void* p, size_t n) {
  const char* c = (const char*)p;
  while (n > 0) {
    ssize_t k = ::send(fd, c, n, MSG_NOSIGNAL);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    c += k;
    n -= (size_t)k;
  }
  return true;
}

bool read_all(int fd, void* p, size_t n) {
  char* c = (char*)p;
  while (n > 0) {
    ssize_t k = ::recv(fd, c, n, 0);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    c += k;
    n -= (size_t)k;
  }
  return true;
}

bool send_frame(int fd, uint8_t tag, const std::string& a, const std::string* b) {
  std::string buf(1, (char)tag);
  uint32_t na = (uint32_t)a.size(), nb = b ? (uint32_t)b->size() : 0;
  buf.append((const char*)&na, 4);
  if (b) buf.append((const char*)&nb, 4);
  buf += a;
  if (b) buf += *b;
  return write_all(fd, buf.data(), buf.size());
}

}  // namespace

TcpStore::TcpStore(const StoreOptions& o) : o_(o) {
  if (o_.world_size < 1 || o_.rank < 0 || o_.rank >= o_.world_size)
    throw_error(ErrorKind::Usage, "store: rank ", o_.rank, " outside world size ", o_.world_size);
  if (o_.rank == 0) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    addr.sin_port = htons((uint16_t)o_.port);
    if (::bind(listen_fd_, (sockaddr*)&addr, sizeof addr) != 0 || ::listen(listen_fd_, 128) != 0) {
      const int e = errno;
      ::close(listen_fd_);
      throw_error(ErrorKind::Io, "rank 0: cannot serve the store on port ", o_.port, ": ", std::strerror(e),
                  " (another run on this MASTER_PORT?)");
    }
    server_ = std::thread([this] { serve(); });
  }
  // Connect, retrying while rank 0 is not up yet.
  const auto t0 = Clock::now();
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  const std::string port = std::to_string(o_.port);
  int last_err = 0;
  while (true) {
    if (::getaddrinfo(o_.host.c_str(), port.c_str(), &hints, &res) == 0 && res) {
      int fd = ::socket(res->ai_family, res->ai_socktype, res->ai_protocol);
      if (::connect(fd, res->ai_addr, res->ai_addrlen) == 0) {
        ::freeaddrinfo(res);
        fd_ = fd;
        break;
      }
      last_err = errno;
      ::close(fd);
      ::freeaddrinfo(res);
    } else {
      last_err = EHOSTUNREACH;
    }
    if (seconds_since(t0) > o_.timeout_s) {
      stop_ = true;
      if (server_.joinable()) server_.join();
      if (listen_fd_ >= 0) ::close(listen_fd_);
      throw_error(ErrorKind::Io, "rank ", o_.rank, ": could not reach the store (rank 0) at ", address(),
                  " within ", o_.timeout_s, " s: ", std::strerror(last_err));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  int one = 1;
  ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  timeval tv{};
  tv.tv_sec = (long)o_.timeout_s;
  tv.tv_usec = (long)((o_.timeout_s - (double)tv.tv_sec) * 1e6);
  ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

TcpStore::~TcpStore() {
  if (fd_ >= 0) ::close(fd_);
  if (o_.rank != 0) return;
  // Rank 0 serves until the other ranks have hung up (they may still be in a last barrier), bounded.
  const auto t0 = Clock::now();
  while (seconds_since(t0) < std::min(o_.timeout_s, 10.0)) {
    {
      std::lock_guard<std::mutex> g(mu_);
      bool any = false;
      for (int fd : client_fds_) any = any || fd >= 0;
      if (!any) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  stop_ = true;
  {
    std::lock_guard<std::mutex> g(mu_);
    for (int fd : client_fds_)
      if (fd >= 0) ::shutdown(fd, SHUT_RDWR);
  }
  if (server_.joinable()) server_.join();
  for (auto& t : client_threads_) t.join();
  ::close(listen_fd_);
}

std::string TcpStore::address() const {
  return o_.host + ":" + std::to_string(o_.port);
}

void TcpStore::fail(const std::string& what) const {
  throw_error(ErrorKind::Io, "rank ", o_.rank, ": ", what, " (store at ", address(), ")");
}

std::string TcpStore::request(uint8_t op, const std::string& key, const std::string& value) {
  std::lock_guard<std::mutex> g(io_mu_);
  uint8_t status = 0;
  uint32_t n = 0;
  if (!send_frame(fd_, op, key, &value) || !read_all(fd_, &status, 1) || !read_all(fd_, &n, 4))
    fail("lost the connection to the store; rank 0 may have exited");
  std::string out(n, '\0');
  if (n && !read_all(fd_, out.data(), n)) fail("lost the connection to the store; rank 0 may have exited");
  return std::string(1, (char)status) + out;
}

void TcpStore::set(const std::string& key, const std::string& value) {
  request(kSet, key, value);
}

void TcpStore::erase(const std::string& key) {
  request(kDel, key, "");
}

bool TcpStore::try_get(const std::string& key, std::string* value) {
  std::string r = request(kGet, key, "");
  if (r[0] == 0) return false;
  if (value) *value = r.substr(1);
  return true;
}

bool TcpStore::check(const std::string& key) {
  return try_get(key, nullptr);
}

std::string TcpStore::get(const std::string& key, double timeout_s) {
  wait({key}, timeout_s);
  std::string v;
  try_get(key, &v);
  return v;
}

int64_t TcpStore::add(const std::string& key, int64_t delta) {
  return std::stoll(request(kAdd, key, std::to_string(delta)).substr(1));
}

void TcpStore::wait(const std::vector<std::string>& keys, double timeout_s) {
  if (timeout_s < 0) timeout_s = o_.timeout_s;
  const auto t0 = Clock::now();
  int sleep_us = 100;
  for (const std::string& k : keys) {
    while (!check(k)) {
      if (seconds_since(t0) > timeout_s)
        fail("timed out after " + std::to_string(timeout_s) + " s waiting for key '" + k + "'");
      std::this_thread::sleep_for(std::chrono::microseconds(sleep_us));
      sleep_us = std::min(sleep_us * 2, 5000);
    }
  }
}

void TcpStore::barrier(const std::string& name, double timeout_s) {
  if (timeout_s < 0) timeout_s = o_.timeout_s;
  const std::string key = "barrier/" + name;
  add(key, 1);
  const auto t0 = Clock::now();
  int sleep_us = 100;
  while (true) {
    std::string v;
    const int64_t n = try_get(key, &v) ? std::stoll(v) : 0;
    if (n >= o_.world_size) return;
    if (seconds_since(t0) > timeout_s)
      fail("timed out after " + std::to_string(timeout_s) + " s in barrier '" + name +
           "': " + std::to_string(n) + " of " + std::to_string(o_.world_size) + " ranks arrived");
    std::this_thread::sleep_for(std::chrono::microseconds(sleep_us));
    sleep_us = std::min(sleep_us * 2, 5000);
  }
}

void TcpStore::serve() {
  while (!stop_) {
    pollfd p{listen_fd_, POLLIN, 0};
    if (::poll(&p, 1, 50) <= 0) continue;
    int fd = ::accept(listen_fd_, nullptr, nullptr);
    if (fd < 0) continue;
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    std::lock_guard<std::mutex> g(mu_);
    client_fds_.push_back(fd);
    const size_t slot = client_fds_.size() - 1;
    client_threads_.emplace_back([this, fd, slot] {
      serve_client(fd);
      std::lock_guard<std::mutex> g2(mu_);
      client_fds_[slot] = -1;
      ::close(fd);
    });
  }
}

void TcpStore::serve_client(int fd) {
  while (!stop_) {
    uint8_t op = 0;
    uint32_t nk = 0, nv = 0;
    if (!read_all(fd, &op, 1) || !read_all(fd, &nk, 4) || !read_all(fd, &nv, 4)) return;
    std::string key(nk, '\0'), val(nv, '\0');
    if ((nk && !read_all(fd, key.data(), nk)) || (nv && !read_all(fd, val.data(), nv))) return;
    uint8_t status = 1;
    std::string out;
    {
      std::lock_guard<std::mutex> g(mu_);
      if (op == kSet) {
        kv_[key] = std::move(val);
      } else if (op == kGet) {
        auto it = kv_.find(key);
        if (it == kv_.end())
          status = 0;
        else
          out = it->second;
      } else if (op == kDel) {
        kv_.erase(key);
      } else if (op == kAdd) {
        auto it = kv_.find(key);
        const int64_t now = (it == kv_.end() ? 0 : std::stoll(it->second)) + std::stoll(val);
        out = kv_[key] = std::to_string(now);
      } else {
        return;  // a stranger on the port: drop it
      }
    }
    if (!send_frame(fd, status, out, nullptr)) return;
  }
}

}  // namespace qtune
