// The C++ consumer: the installed <ctxvars.hpp>, compiled as C++17 by a
// project outside ctxvars. Prints the same line as consumer.c.
#include <ctxvars.hpp>

#include <cstdio>
#include <string>
#include <thread>

static void scenario()
{
    ctxvars::var<const char> request_id("request_id", "none");
    const char *before = request_id.value();

    auto token = request_id.set("req-42");

    // A copy runs with the value; its own set stays inside it.
    ctxvars::context ctx = ctxvars::context::copy_current();
    std::string seen_in_run;
    ctx.run([&] {
        seen_in_run = request_id.get_or("-");
        request_id.set("inner");
    });
    const char *in_ctx = ctx.get(request_id).value_or("absent");

    // A callable wrapped here runs in this context on another thread.
    std::string seen_in_thread;
    std::thread(ctxvars::wrap([&] { seen_in_thread = request_id.get_or("-"); })).join();

    const char *after_run = request_id.get_or("-");
    request_id.reset(token);
    const char *after_reset = request_id.value();

    std::printf("ctxvars %d.%d.%d: before=%s set=%s run=%s ctx=%s thread=%s reset=%s ok\n", CV_VERSION_MAJOR,
                CV_VERSION_MINOR, CV_VERSION_PATCH, before, after_run, seen_in_run.c_str(), in_ctx,
                seen_in_thread.c_str(), after_reset);
}

int main()
{
    try {
        scenario();
    } catch (const std::exception &e) {
        std::fprintf(stderr, "consumer_cxx: %s\n", e.what());
        return 1;
    }
    cv_reclaim_barrier();
    return 0;
}
