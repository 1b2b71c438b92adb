// Reliability with the real ultramem-train binary (docs/reliability.md): SIGKILL at random moments and
// at every named point of a checkpoint save, SIGTERM/SIGINT, and a full disk (injected ENOSPC); after
// each, --resume must reach the same final weights, moments and loss log as an uninterrupted run, bit
// for bit. CPU runs in the e2e suite; the same on the GPU in the gpu suite.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "reliability_fixtures.h"
#include "testing.h"
#include "ultramem/io/checkpoint.h"

extern char** environ;

using namespace um;
namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using testing::read_bytes;

namespace {

// A run directory with its config file; spawns ultramem-train on it.
struct Run {
  std::string dir, config;
  explicit Run(const std::string& name, const std::string& device, int64_t max_steps, const json& train_extra = json::object()) {
    dir = testing::fresh_run_dir(name);
    json c = testing::small_config_json(dir + "/out", device, max_steps);
    for (auto it = train_extra.begin(); it != train_extra.end(); ++it) c["train"][it.key()] = it.value();
    config = dir + "/config-in.json";
    std::ofstream(config) << c.dump(2);
  }
  std::string out() const { return dir + "/out"; }
  std::string log() const { return dir + "/log.txt"; }
  bool has_checkpoint() const { return !io::latest_checkpoint(out()).empty(); }

  // Starts the binary (--resume when a checkpoint exists), stdout and stderr appended to log().
  pid_t start(const std::vector<std::string>& extra_args = {}, const std::vector<std::string>& extra_env = {}) const {
    std::vector<std::string> args = {ULTRAMEM_TRAIN_BIN, config};
    if (has_checkpoint()) args.push_back("--resume");
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    std::vector<std::string> env;
    for (char** e = environ; *e; ++e)
      if (std::string(*e).rfind("ULTRAMEM_TEST_", 0) != 0) env.push_back(*e);
    env.insert(env.end(), extra_env.begin(), extra_env.end());
    std::vector<char*> argv, envp;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log().c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    pid_t pid = -1;
    int rc = posix_spawn(&pid, ULTRAMEM_TRAIN_BIN, &fa, nullptr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&fa);
    REQUIRE(rc == 0);
    return pid;
  }
  // Runs to the end; returns the wait status.
  int run(const std::vector<std::string>& extra_args = {}, const std::vector<std::string>& extra_env = {}) const {
    return wait_for(start(extra_args, extra_env));
  }
  static int wait_for(pid_t pid) {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return status;
  }
  std::string final_file(int64_t step, const std::string& name) const {
    char buf[32];
    std::snprintf(buf, sizeof buf, "step-%08lld", static_cast<long long>(step));
    return out() + "/checkpoints/" + buf + "/" + name;
  }
  // (step, loss, grad_norm, lr, tokens) of every logged step.
  std::vector<std::vector<double>> losses() const {
    std::vector<std::vector<double>> v;
    std::ifstream in(out() + "/metrics.jsonl");
    for (std::string line; std::getline(in, line);) {
      json j = json::parse(line, nullptr, /*allow_exceptions=*/false);  // a killed run's torn last line
      if (j.is_object() && j.contains("loss"))
        v.push_back({j["step"].get<double>(), j["loss"].get<double>(), j["grad_norm"].get<double>(), j["lr"].get<double>(),
                     j["tokens"].get<double>()});
    }
    return v;
  }
};

bool exited_ok(int status) { return WIFEXITED(status) && WEXITSTATUS(status) == 0; }
bool killed(int status) { return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL; }

void check_same_result(const Run& ref, const Run& run, int64_t step) {
  INFO(read_bytes(run.log()));
  for (const char* f : {"model.safetensors", "optimizer.safetensors"}) {
    REQUIRE(fs::exists(run.final_file(step, f)));
    CHECK(read_bytes(ref.final_file(step, f)) == read_bytes(run.final_file(step, f)));
  }
  CHECK(ref.losses().size() == size_t(step));
  CHECK(ref.losses() == run.losses());
}

size_t dir_bytes(const std::string& dir) {
  size_t n = 0;
  for (const auto& e : fs::directory_iterator(dir)) n += fs::file_size(e.path());
  return n;
}

// Waits until metrics.jsonl has `lines` lines; false when the process exited first (it is then
// not reaped: the caller waits for it).
bool wait_for_lines(const Run& r, size_t lines, pid_t pid) {
  const auto deadline = Clock::now() + std::chrono::seconds(120);
  while (Clock::now() < deadline) {
    std::ifstream in(r.out() + "/metrics.jsonl");
    size_t n = 0;
    for (std::string l; std::getline(in, l);) ++n;
    if (n >= lines) return true;
    siginfo_t info = {};
    if (::waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == pid) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(500));
  }
  FAIL("the run did not reach " << lines << " logged steps");
  return false;
}

void kill_and_resume(const std::string& device, int random_kills) {
  const int64_t steps = 40;
  Run ref("kill-ref-" + device, device, steps);
  const auto t0 = Clock::now();
  REQUIRE(exited_ok(ref.run()));
  const double ref_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  const json every = {{"checkpoint_every", 1}};

  SECTION("SIGKILL at random moments") {
    Run r("kill-random-" + device, device, steps, every);
    std::random_device rd;
    const unsigned seed = rd();
    std::mt19937 rng(seed);
    // Each process is killed at a random moment: a quarter of them during start-up (0-30 ms), the
    // others once they logged 1-4 more steps, plus 0-5 ms (inside a step or a checkpoint write).
    // Progress, not wall time, places the kills, so a loaded machine does not move them past the end.
    std::uniform_int_distribution<int> mode(0, 3), more_steps(1, 4);
    std::uniform_real_distribution<double> startup(0.0, 0.03), extra(0.0, 0.005);
    std::string delays;
    int kills = 0;
    for (int i = 0; i < random_kills; ++i) {
      if (!r.has_checkpoint()) fs::remove_all(r.out());  // nothing to resume: start over
      const size_t logged = r.losses().size();
      const bool early = mode(rng) == 0;
      const int k = more_steps(rng);
      const double d = early ? startup(rng) : extra(rng);
      pid_t pid = r.start();
      if (!early && !wait_for_lines(r, logged + size_t(k), pid)) {
        delays += " (finished)";
        CHECK(exited_ok(Run::wait_for(pid)));
        break;
      }
      std::this_thread::sleep_for(std::chrono::duration<double>(d));
      ::kill(pid, SIGKILL);
      int status = Run::wait_for(pid);
      delays += early ? detail::concat(" start+", int(d * 1000), "ms") : detail::concat(" step+", k, "+", int(d * 1e6), "us");
      if (exited_ok(status)) {
        delays += "(finished)";
        break;
      }
      CHECK(killed(status));
      ++kills;
    }
    INFO("kill seed " << seed << ", reference run " << ref_seconds << " s, kills at" << delays);
    CHECK(kills >= random_kills / 2);
    if (!r.has_checkpoint()) fs::remove_all(r.out());
    REQUIRE(exited_ok(r.run()));
    check_same_result(ref, r, steps);
  }
  SECTION("SIGKILL at each point of a checkpoint save") {
    Run r("kill-points-" + device, device, steps, every);
    // Each at its second arrival in the process (the first save completes); "safetensors:data" fires
    // after every tensor: @50 lands inside the second save's model file, @70 inside its optimizer file.
    for (const char* at : {"checkpoint:model@2", "safetensors:data@50", "checkpoint:optimizer@2",
                           "checkpoint:before-rename@2", "checkpoint:renamed@2", "safetensors:data@70",
                           "checkpoint:latest@2", "checkpoint:pruned@2"}) {
      int status = r.run({}, {std::string("ULTRAMEM_TEST_CRASH_AT=") + at});
      INFO(at << "\n" << read_bytes(r.log()));
      CHECK(killed(status));
      CHECK(r.has_checkpoint());
    }
    REQUIRE(exited_ok(r.run()));
    check_same_result(ref, r, steps);
  }
  SECTION("a full disk during a checkpoint is a clear error, and the run resumes") {
    Run r("disk-full-" + device, device, steps, every);
    // Fail during the second checkpoint: after config.json and one whole checkpoint.
    const size_t budget = fs::file_size(ref.out() + "/config.json") +
                          dir_bytes(ref.out() + "/checkpoints/step-00000040") * 3 / 2;
    int status = r.run({}, {"ULTRAMEM_TEST_ENOSPC_AFTER=" + std::to_string(budget)});
    const std::string log = read_bytes(r.log());
    INFO(log);
    CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 1));
    CHECK(log.find("No space left on device") != std::string::npos);
    CHECK(log.find("step-00000001 is intact") != std::string::npos);
    CHECK(io::latest_checkpoint(r.out()).find("step-00000001") != std::string::npos);
    CHECK_FALSE(fs::exists(r.out() + "/checkpoints/step-00000002.tmp"));
    REQUIRE(exited_ok(r.run()));
    check_same_result(ref, r, steps);
  }
}

void signal_and_resume(const std::string& device) {
  // A constant schedule: the trajectory does not depend on max_steps, so a long run stopped at step S
  // and resumed to S + 2 must equal a run of S + 2 steps.
  const json train = {{"log_every", 1}};
  auto constant = [](Run& r) {
    json c = json::parse(read_bytes(r.config));
    c["optim"]["schedule"] = "constant";
    std::ofstream(r.config) << c.dump(2);
  };
  for (int sig : {SIGTERM, SIGINT}) {
    Run r(std::string("signal-") + (sig == SIGTERM ? "term-" : "int-") + device, device, 100000, train);
    constant(r);
    pid_t pid = r.start();
    REQUIRE(wait_for_lines(r, 3, pid));
    ::kill(pid, sig);
    int status = Run::wait_for(pid);
    const std::string log = read_bytes(r.log());
    INFO(log);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 128 + sig);
    CHECK(log.find("stopped by signal") != std::string::npos);
    const std::string latest = io::latest_checkpoint(r.out());
    REQUIRE(!latest.empty());
    const int64_t s = std::stoll(fs::path(latest).filename().string().substr(5));
    CHECK(s >= 3);
    CHECK(r.losses().size() == size_t(s));  // every finished step is in the checkpoint
    if (sig == SIGINT) continue;
    REQUIRE(exited_ok(r.run({"--set", "train.max_steps=" + std::to_string(s + 2)})));
    Run ref(std::string("signal-ref-") + device, device, s + 2, train);
    constant(ref);
    REQUIRE(exited_ok(ref.run()));
    check_same_result(ref, r, s + 2);
  }
}

}  // namespace

TEST_CASE("killed training processes resume bit-exactly; a full disk loses nothing (CPU)", "[e2e]") {
  kill_and_resume("cpu", 8);
}

TEST_CASE("SIGTERM/SIGINT save a checkpoint and exit 128+signal; resume is exact (CPU)", "[e2e]") {
  signal_and_resume("cpu");
}

TEST_CASE("GPU: killed training processes resume bit-exactly; a full disk loses nothing", "[gpu][e2e]") {
  UM_REQUIRE_GPU();
  kill_and_resume("cuda", 4);
}

TEST_CASE("GPU: SIGTERM/SIGINT save a checkpoint and exit 128+signal; resume is exact", "[gpu][e2e]") {
  UM_REQUIRE_GPU();
  signal_and_resume("cuda");
}
