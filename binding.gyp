{
  "targets": [
    {
      "target_name": "userfaultfd",
      "conditions": [
        ["OS!='linux'", {"type": "none"}, {
          "sources": [
            "native/binding.cc",
            "native/binding_constants.cc",
            "native/binding_memory.cc",
            "native/binding_socket.cc",
            "native/binding_uffd.cc",
            "native/fault_stream.cc",
            "native/fd_watch.cc",
            "native/kvm.cc",
            "native/mapping_table.cc",
            "native/memory.cc",
            "native/message_queue.cc",
            "native/page_server.cc",
            "native/pidfd.cc",
            "native/spin_policy.cc",
            "native/uffd.cc",
            "native/uffd_share.cc",
            "native/unix_socket.cc"
          ],
          "dependencies": ["<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"],
          "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED", "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"],
          "cflags_cc": ["-std=c++20", "-Wall", "-Wextra", "-fvisibility=hidden", "-fstack-protector-strong"],
          "cflags_cc!": ["-std=gnu++17", "-fno-exceptions"]
        }]
      ]
    }
  ]
}
